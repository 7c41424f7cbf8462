"""Make Chainer 7.8.1's bundled ``onnx_chainer`` work with a current ``onnx`` (tested: 1.23.2).

Import this module before ``onnx_chainer``; ``branchynet.deploy`` does. Like
``branchynet._compat`` it only adds what is missing and changes nothing that exists.

``onnx_chainer`` (shipped inside the chainer 7.8.1 distribution) reads two tables from
``onnx.mapping``, a module onnx deprecated in 1.13 and no longer ships (1.23.2 has none):
``NP_TYPE_TO_TENSOR_TYPE`` (export.py, functions/array.py, functions/math.py) and
``STORAGE_TENSOR_TYPE_TO_FIELD`` (context.py). This provides that module, built from
the ``onnx.helper`` functions that replaced it, when onnx no longer has it.
"""
import sys
import types

import numpy
import onnx
from onnx import TensorProto, helper


def _mapping_module():
    """An ``onnx.mapping`` stand-in with the two tables ``onnx_chainer`` reads."""
    module = types.ModuleType("onnx.mapping")
    dtypes = [numpy.float16, numpy.float32, numpy.float64, numpy.int8, numpy.int16,
              numpy.int32, numpy.int64, numpy.uint8, numpy.uint16, numpy.uint32,
              numpy.uint64, numpy.bool_, numpy.complex64, numpy.complex128]
    module.NP_TYPE_TO_TENSOR_TYPE = {numpy.dtype(t): helper.np_dtype_to_tensor_dtype(numpy.dtype(t))
                                     for t in dtypes}
    module.TENSOR_TYPE_TO_NP_TYPE = {v: k for k, v in module.NP_TYPE_TO_TENSOR_TYPE.items()}
    # The table of onnx <= 1.15 (onnx/mapping.py): the repeated field that stores each
    # storage type in a TensorProto.
    module.STORAGE_TENSOR_TYPE_TO_FIELD = {
        TensorProto.FLOAT: "float_data", TensorProto.INT32: "int32_data",
        TensorProto.INT64: "int64_data", TensorProto.UINT16: "int32_data",
        TensorProto.DOUBLE: "double_data", TensorProto.COMPLEX64: "float_data",
        TensorProto.COMPLEX128: "double_data", TensorProto.UINT32: "uint64_data",
        TensorProto.UINT64: "uint64_data", TensorProto.STRING: "string_data",
        TensorProto.BOOL: "int32_data"}
    return module


if not hasattr(onnx, "mapping"):
    try:
        import onnx.mapping  # noqa: F401  (present up to onnx 1.15)
    except ImportError:
        onnx.mapping = sys.modules["onnx.mapping"] = _mapping_module()
