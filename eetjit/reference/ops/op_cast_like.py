"""CastLike: cast ``input`` to the element type of ``target_type`` (only its dtype is used)."""
import numpy as np

from eetjit.reference.registry import register

from ._dtypes import numpy_to_onnx
from .op_cast import cast


def cast_like(x: np.ndarray, target_type: np.ndarray, saturate: int = 1) -> np.ndarray:
    return cast(x, numpy_to_onnx(np.asarray(target_type).dtype), saturate)


@register("CastLike")
def _cast_like(inputs, attrs, opset):
    return [cast_like(inputs[0], inputs[1], int(attrs.get("saturate", 1)))]
