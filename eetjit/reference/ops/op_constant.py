"""Constant: emit the tensor held in exactly one of its value attributes."""
import numpy as np

from eetjit.reference.registry import register


def constant(attrs: dict) -> np.ndarray:
    given = [k for k in attrs if k.startswith("value") or k == "sparse_value"]
    if len(given) != 1:
        raise ValueError(f"Constant: exactly one value attribute expected, got {given}")
    key = given[0]
    v = attrs[key]
    if key == "value":
        return np.array(v, copy=True)
    if key == "value_float":
        return np.array(v, dtype=np.float32)                   # scalar float32
    if key == "value_floats":
        return np.array(list(v), dtype=np.float32).reshape(-1)  # 1-D float32
    if key == "value_int":
        return np.array(v, dtype=np.int64)                     # scalar int64
    if key == "value_ints":
        return np.array(list(v), dtype=np.int64).reshape(-1)    # 1-D int64
    if key == "value_string":
        return np.array(_str(v), dtype=object)
    if key == "value_strings":
        return np.array([_str(s) for s in v], dtype=object).reshape(-1)
    raise ValueError(f"Constant: attribute '{key}' (sparse tensors) is not supported")


def _str(s) -> str:
    return s.decode("utf-8") if isinstance(s, bytes) else str(s)


@register("Constant")
def _constant(inputs, attrs, opset):
    return [constant(attrs)]
