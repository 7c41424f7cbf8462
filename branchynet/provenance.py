"""What made a result: hashes of weights and inputs, and the machine and BLAS settings.

Cached exit outputs and timings carry such a key; a cache whose key differs from the
current one is stale and is recomputed, never reused.
"""
import hashlib
import os

import numpy as np

from branchynet.datasets._files import file_digest
from branchynet.report import machine_info


def file_sha256(path):
    """SHA-256 of a file's bytes."""
    return file_digest(path, "sha256")


def array_sha256(array):
    """SHA-256 of an array's dtype, shape and bytes (C order)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def blas_settings():
    """The BLAS library NumPy uses, its thread count, and the thread variables set."""
    env = {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                      "MKL_NUM_THREADS") if k in os.environ}
    try:
        from threadpoolctl import threadpool_info
        pools = [{k: p.get(k) for k in ("internal_api", "version", "num_threads")}
                 for p in threadpool_info() if p.get("user_api") == "blas"]
    except ImportError:
        pools = None
    return {"environment": env, "blas": pools}


def machine_key(device):
    """The parts of ``machine_info`` and ``blas_settings`` that change a timing."""
    info = machine_info(device)
    keep = ("device", "cpu", "cpu_count", "gpu", "python", "chainer", "numpy", "cupy")
    return {**{k: info[k] for k in keep if k in info}, "blas": blas_settings()}


def differences(old, new, prefix=""):
    """The keys (dotted paths) where two nested dicts differ."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix.rstrip(".") or "(value)"]
    found = []
    for key in sorted(set(old) | set(new), key=str):
        found += differences(old.get(key), new.get(key), f"{prefix}{key}.")
    return found
