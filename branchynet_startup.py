"""Apply BranchyNet's NumPy-2 fixes for Chainer whenever ``chainer`` is imported first.

``./dev.sh`` installs a one-line ``.pth`` file in the project's environment that calls
``install()``, so a script doing ``import chainer`` before ``import branchynet`` works on
NumPy 2. Nothing is imported until ``chainer`` is: the hook then adds what
``branchynet._compat`` adds (``numpy.sctypes``, the CuPy environment defaults, and a
stand-in ``numpy.distutils.system_info`` only while Chainer's environment check runs, where
NumPy has no ``numpy.distutils``) and lets the normal import go on.
"""
import importlib.util
import os
import sys
import types

_STUBS = ("numpy.distutils", "numpy.distutils.system_info")


class _BeforeChainer:
    """Meta-path hook: prepares NumPy on ``import chainer``, undoes the stand-in on
    ``import chainerx`` (the first import after Chainer's environment check)."""

    def __init__(self):
        self.stubbed = False

    def find_spec(self, name, path=None, target=None):
        if name == "chainer":
            self._prepare()
        elif name == "chainerx":
            sys.meta_path.remove(self)
            if self.stubbed:
                for stub in _STUBS:
                    sys.modules.pop(stub, None)
        return None

    def _prepare(self):
        import numpy
        os.environ.setdefault("CHAINER_CUDNN", "0")
        os.environ.setdefault("CHAINER_WARN_VERSION_MISMATCH", "0")
        add_sctypes(numpy)
        if importlib.util.find_spec("numpy.distutils") is None:
            system_info = types.ModuleType(_STUBS[1])
            system_info.get_info = lambda *args, **kwargs: {}
            distutils = types.ModuleType(_STUBS[0])
            distutils.system_info = system_info
            sys.modules.update(dict(zip(_STUBS, [distutils, system_info])))
            self.stubbed = True


def add_sctypes(numpy):
    """``numpy.sctypes`` (removed in NumPy 2.0), which chainer/functions/array/as_strided.py
    reads; nothing changes where it exists."""
    if not hasattr(numpy, "sctypes"):
        numpy.sctypes = {
            "int": [numpy.int8, numpy.int16, numpy.int32, numpy.int64],
            "uint": [numpy.uint8, numpy.uint16, numpy.uint32, numpy.uint64],
            "float": [numpy.float16, numpy.float32, numpy.float64, numpy.longdouble],
            "complex": [numpy.complex64, numpy.complex128, numpy.clongdouble],
            "others": [bool, object, bytes, str, numpy.void],
        }


def install():
    """Add the hook (once; not when Chainer is already imported)."""
    if "chainer" not in sys.modules and not any(isinstance(f, _BeforeChainer) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeChainer())
