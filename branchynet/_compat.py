"""Make Chainer 7.8.1 importable on a current stack (NumPy 2, Python 3.12+, CuPy 14).

Import this module before ``chainer``; ``branchynet/__init__.py`` does, so
``import branchynet`` is enough. It only adds what is missing and changes nothing that
exists (see CHAINER-ON-A-CURRENT-STACK.md for the findings behind each fix).
"""
import os
import sys
import types

import numpy

# CuPy 14 ships no cuDNN: tell Chainer not to look for it (silences an import-time
# warning), and do not warn that the package is called cupy-cudaXXx rather than cupy.
os.environ.setdefault("CHAINER_CUDNN", "0")
os.environ.setdefault("CHAINER_WARN_VERSION_MISMATCH", "0")

# NumPy 2 removed ``numpy.sctypes``; chainer/functions/array/as_strided.py reads it.
if not hasattr(numpy, "sctypes"):
    numpy.sctypes = {
        "int": [numpy.int8, numpy.int16, numpy.int32, numpy.int64],
        "uint": [numpy.uint8, numpy.uint16, numpy.uint32, numpy.uint64],
        "float": [numpy.float16, numpy.float32, numpy.float64, numpy.longdouble],
        "complex": [numpy.complex64, numpy.complex128, numpy.clongdouble],
        "others": [bool, object, bytes, str, numpy.void],
    }


def _import_chainer():
    """Import chainer, stubbing ``numpy.distutils.system_info`` only for that import.

    chainer/_environment_check.py imports it (gone with NumPy 2 and Python 3.12) to read
    BLAS information it only prints in warnings.
    """
    if "chainer" in sys.modules:
        return
    try:
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
