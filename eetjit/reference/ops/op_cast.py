"""Cast: convert a tensor to the element type ``to`` (a TensorProto.DataType enum).

Float -> integer truncates toward zero (out-of-range/NaN results are undefined in ONNX).
Anything -> bool is ``x != 0``. ``saturate`` (opset 19+) only matters for float8 targets:
when set, finite out-of-range values clamp to the largest finite value.
Strings are parsed (string -> number) or formatted with ``str`` (number -> string).
"""
import numpy as np

from eetjit.reference.registry import register

from . import _dtypes
from ._dtypes import onnx_to_numpy

_FLOAT8 = {_dtypes.FLOAT8E4M3FN, _dtypes.FLOAT8E4M3FNUZ, _dtypes.FLOAT8E5M2, _dtypes.FLOAT8E5M2FNUZ}


def cast(x: np.ndarray, to: int, saturate: int = 1) -> np.ndarray:
    x = np.asarray(x)
    target = onnx_to_numpy(to)
    if to == _dtypes.STRING:
        return np.vectorize(_to_string, otypes=[object])(x) if x.size else np.empty(x.shape, object)
    if x.dtype.kind in "OUS":
        # string -> number: parse as float (covers "1", "1.5", "inf", "NaN"), then cast
        parsed = np.vectorize(lambda s: float(s.decode() if isinstance(s, bytes) else s),
                              otypes=[np.float64])(x) if x.size else np.empty(x.shape, np.float64)
        return cast(parsed, to, saturate)
    if to == _dtypes.FLOAT8E8M0:
        raise ValueError("Cast: FLOAT8E8M0 targets (round_mode) are not supported by the reference")
    if to in _FLOAT8 and saturate:
        x = _saturate(x.astype(np.float32), to, target)
    with np.errstate(invalid="ignore", over="ignore"):
        if target == np.bool_:
            return np.asarray(x != 0, dtype=np.bool_)
        return x.astype(target)


def _to_string(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    return str(v.item() if hasattr(v, "item") else v)


def _saturate(x: np.ndarray, to: int, target: np.dtype) -> np.ndarray:
    # Clamp |x| > max finite to +-max; +-inf also clamps for the types that have no inf
    # encoding in saturate mode (E4M3FN, E5M2); the FNUZ types turn inf into NaN.
    big = float(np.finfo(target).max)
    y = np.clip(x, -big, big)
    if to in (_dtypes.FLOAT8E4M3FNUZ, _dtypes.FLOAT8E5M2FNUZ):
        y = np.where(np.isinf(x), np.float32(np.nan), y)
    return y.astype(np.float32)


@register("Cast")
def _cast(inputs, attrs, opset):
    if "to" not in attrs:
        raise ValueError("Cast: missing required attribute 'to'")
    return [cast(inputs[0], int(attrs["to"]), int(attrs.get("saturate", 1)))]
