"""Make Chainer 7.8.1 importable on a current stack (NumPy 2, Python 3.12+, CuPy 14).

Import this module before ``chainer``; ``branchynet/__init__.py`` does, so
``import branchynet`` is enough. It only adds what is missing and changes nothing that
exists (see CHAINER-ON-A-CURRENT-STACK.md for the findings behind each fix).
"""
import os
import sys
import types
import warnings

import numpy

# CuPy 14 ships no cuDNN: tell Chainer not to look for it (silences an import-time
# warning; with CuPy 13 and a cuDNN installed it keeps Chainer on the same im2col kernels),
# and do not warn that the package is called cupy-cudaXXx rather than cupy.
os.environ.setdefault("CHAINER_CUDNN", "0")
os.environ.setdefault("CHAINER_WARN_VERSION_MISMATCH", "0")

from branchynet_startup import add_sctypes  # noqa: E402  (no Chainer import there)

add_sctypes(numpy)


def _import_chainer():
    """Import chainer, stubbing ``numpy.distutils.system_info`` only for that import.

    chainer/_environment_check.py imports it (gone with NumPy 2 and Python 3.12) to read
    BLAS information it only prints in warnings.
    """
    if "chainer" in sys.modules:
        return
    try:
        with warnings.catch_warnings():  # present (deprecated) on NumPy < 2.5 and Python 3.11
            warnings.simplefilter("ignore", DeprecationWarning)
            import numpy.distutils.system_info  # noqa: F401
        stubbed = []
    except Exception:
        system_info = types.ModuleType("numpy.distutils.system_info")
        system_info.get_info = lambda *args, **kwargs: {}
        distutils = types.ModuleType("numpy.distutils")
        distutils.system_info = system_info
        stubbed = ["numpy.distutils", "numpy.distutils.system_info"]
        sys.modules.update(dict(zip(stubbed, [distutils, system_info])))
    try:
        import chainer  # noqa: F401
    finally:
        for name in stubbed:
            sys.modules.pop(name, None)


_import_chainer()


def cuda_status():
    """``(gpus, reason)``: how many CUDA GPUs Chainer can use here, and why none if 0.

    Chainer 7 swallows any error while importing CuPy and only sets
    ``chainer.backends.cuda.available = False``. With CuPy 14 the usual cause is missing
    CUDA libraries (the wheels ship none: install ``cupy-cuda12x[ctk]`` or a CUDA
    toolkit), which Chainer notices because it imports ``cupyx.scipy.linalg`` (cuBLAS).
    This reports that reason instead of hiding it. See docs/gpu.md.
    """
    try:
        import cupy
    except Exception as err:  # ImportError, or a broken install raising anything
        return 0, f"CuPy is not installed ({type(err).__name__}: {err})"
    from chainer.backends import cuda
    if not cuda.available:
        err = getattr(cuda, "_resolution_error", None)
        return 0, (f"Chainer cannot use CuPy {cupy.__version__}: "
                   f"{type(err).__name__}: {err}").strip()
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # no driver, or a driver older than the CUDA runtime
        return 0, f"CuPy {cupy.__version__} finds no usable CUDA device ({err})"
    if count == 0:
        return 0, f"CuPy {cupy.__version__}: cupy.cuda.runtime.getDeviceCount() == 0"
    return count, ""
