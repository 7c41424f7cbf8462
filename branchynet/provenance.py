"""What made a result: hashes of weights and inputs, and the machine and BLAS settings.

Cached exit outputs and timings carry such a key; a cache whose key differs from the
current one is stale and is recomputed, never reused.
"""
import hashlib
import json
import os

import numpy as np

from branchynet.datasets._files import file_digest
from branchynet import cpu_kernels
from branchynet.report import machine_info
from branchynet.threads import blas_info, timing_blas


def file_sha256(path):
    """SHA-256 of a file's bytes."""
    return file_digest(path, "sha256")


def array_sha256(array):
    """SHA-256 of an array's dtype, shape and bytes (C order)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def exit_outputs_key(weights_path, x, y, criterion):
    """The key an exit-output cache is stored under: the weights file, the inputs, the labels
    and the exit criterion it was made with."""
    return json.dumps({"weights": file_sha256(weights_path), "inputs": array_sha256(x),
                       "labels": array_sha256(y), "criterion": criterion}, sort_keys=True)


def blas_settings():
    """The loaded BLAS libraries with their current thread counts, and the thread variables
    set in the environment (which ``branchynet.threads`` overrides where it sets a count)."""
    env = {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                      "MKL_NUM_THREADS") if k in os.environ}
    return {"environment": env, "blas": blas_info()}


def machine_key(device):
    """The parts of ``machine_info`` that change a timing, the BLAS libraries with the
    thread count batch-size-1 timing runs with (set by ``branchynet.threads``, whatever
    the environment says), and on the CPU whether ``branchynet.cpu_kernels`` replaced
    Chainer's kernels, naming its groups when not all of them ran (records made before it
    existed have no entry, as with the kernels switched off)."""
    info = machine_info(device)
    keep = ("device", "cpu", "cpu_count", "gpu", "python", "chainer", "numpy", "cupy")
    blas = [{k: p[k] for k in ("internal_api", "version", "num_threads")} for p in timing_blas()]
    key = {**{k: info[k] for k in keep if k in info}, "blas": _sorted_blas(blas)}
    if str(device) == "@numpy" and cpu_kernels.is_enabled():  # Chainer's own CPU kernels: no entry
        groups = cpu_kernels.enabled_groups()
        key["cpu_kernels"] = "branchynet.cpu_kernels" + (
            "" if groups == cpu_kernels.GROUPS else f" ({', '.join(groups)})")
    return key


def _sorted_blas(blas):
    # threadpoolctl lists the libraries in the order they were loaded, which depends on
    # what the process imported first: the same machine must give the same key.
    return sorted(blas, key=lambda p: json.dumps(p, sort_keys=True))


def canonical_key(key):
    """A timing record's key with its machine's BLAS libraries in ``machine_key``'s order
    (records written before that order was fixed list them as loaded), for comparisons."""
    if not isinstance(key, dict) or not isinstance(key.get("machine"), dict):
        return key
    machine = dict(key["machine"])
    if isinstance(machine.get("blas"), list):
        machine["blas"] = _sorted_blas(machine["blas"])
    return {**key, "machine": machine}


def differences(old, new, prefix=""):
    """The keys (dotted paths) where two nested dicts differ."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix.rstrip(".") or "(value)"]
    found = []
    for key in sorted(set(old) | set(new), key=str):
        found += differences(old.get(key), new.get(key), f"{prefix}{key}.")
    return found
