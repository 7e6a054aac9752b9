"""ONNX ``TensorProto.DataType`` enum <-> NumPy dtype mapping.

Reusable by anything that needs to turn an ONNX element type into a NumPy dtype
(Cast's ``to``, ConstantOfShape's default, Attention's ``softmax_precision``,
LayerNormalization's ``stash_type`` ...).  Exotic low-precision types come from
``ml_dtypes`` when it is installed; asking for one that is not available raises
``ValueError``.
"""
from __future__ import annotations

import numpy as np

try:  # optional: bfloat16 / float8 / int4 support
    import ml_dtypes as _ml
except ImportError:  # pragma: no cover - ml_dtypes ships with onnx in practice
    _ml = None

# TensorProto.DataType values (stable across onnx releases).
UNDEFINED = 0
FLOAT = 1
UINT8 = 2
INT8 = 3
UINT16 = 4
INT16 = 5
INT32 = 6
INT64 = 7
STRING = 8
BOOL = 9
FLOAT16 = 10
DOUBLE = 11
UINT32 = 12
UINT64 = 13
COMPLEX64 = 14
COMPLEX128 = 15
BFLOAT16 = 16
FLOAT8E4M3FN = 17
FLOAT8E4M3FNUZ = 18
FLOAT8E5M2 = 19
FLOAT8E5M2FNUZ = 20
UINT4 = 21
INT4 = 22
FLOAT4E2M1 = 23
FLOAT8E8M0 = 24
UINT2 = 25
INT2 = 26

_ONNX_TO_NUMPY: dict[int, np.dtype] = {
    FLOAT: np.dtype(np.float32),
    UINT8: np.dtype(np.uint8),
    INT8: np.dtype(np.int8),
    UINT16: np.dtype(np.uint16),
    INT16: np.dtype(np.int16),
    INT32: np.dtype(np.int32),
    INT64: np.dtype(np.int64),
    STRING: np.dtype(object),
    BOOL: np.dtype(np.bool_),
    FLOAT16: np.dtype(np.float16),
    DOUBLE: np.dtype(np.float64),
    UINT32: np.dtype(np.uint32),
    UINT64: np.dtype(np.uint64),
    COMPLEX64: np.dtype(np.complex64),
    COMPLEX128: np.dtype(np.complex128),
}

_ML_NAMES = {
    BFLOAT16: "bfloat16",
    FLOAT8E4M3FN: "float8_e4m3fn",
    FLOAT8E4M3FNUZ: "float8_e4m3fnuz",
    FLOAT8E5M2: "float8_e5m2",
    FLOAT8E5M2FNUZ: "float8_e5m2fnuz",
    UINT4: "uint4",
    INT4: "int4",
    FLOAT4E2M1: "float4_e2m1fn",
    FLOAT8E8M0: "float8_e8m0fnu",
    UINT2: "uint2",
    INT2: "int2",
}
if _ml is not None:
    for _enum, _name in _ML_NAMES.items():
        if hasattr(_ml, _name):
            _ONNX_TO_NUMPY[_enum] = np.dtype(getattr(_ml, _name))

_NUMPY_TO_ONNX: dict[np.dtype, int] = {v: k for k, v in _ONNX_TO_NUMPY.items() if k != STRING}
_NUMPY_TO_ONNX[np.dtype(object)] = STRING
_NUMPY_TO_ONNX[np.dtype(np.str_)] = STRING


def onnx_to_numpy(enum: int) -> np.dtype:
    """NumPy dtype for an ONNX ``TensorProto.DataType`` value."""
    try:
        return _ONNX_TO_NUMPY[int(enum)]
    except KeyError:
        name = _ML_NAMES.get(int(enum))
        hint = f" ({name} needs the ml_dtypes package)" if name else ""
        raise ValueError(f"unsupported ONNX element type {enum}{hint}") from None


def numpy_to_onnx(dtype) -> int:
    """ONNX ``TensorProto.DataType`` value for a NumPy dtype."""
    dt = np.dtype(dtype)
    if dt.kind == "U":
        return STRING
    try:
        return _NUMPY_TO_ONNX[dt]
    except KeyError:
        raise ValueError(f"NumPy dtype {dt} has no ONNX element type") from None


def is_float(dtype) -> bool:
    """True for IEEE-like floating types, including the ml_dtypes ones (bfloat16, float8...)."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return True
    return _ml is not None and dt in _ML_FLOATS


_ML_FLOATS = {
    _ONNX_TO_NUMPY[e]
    for e in (BFLOAT16, FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ, FLOAT4E2M1, FLOAT8E8M0)
    if e in _ONNX_TO_NUMPY
}
