"""Pad: grow (or, with negative pads, crop) a tensor at both ends of each axis.

pads = [b_0, b_1, ..., e_0, e_1, ...]: b_i elements before and e_i after axis i
(only for the listed ``axes`` from opset 18). Modes: constant (fill with
constant_value, default 0), reflect (mirror without repeating the edge), edge
(repeat the edge), wrap (opset 19: cyclic). Negative pads crop first, then the
positive ones pad. Opset < 11: ``pads`` and ``value`` are attributes (opset 1: ``paddings``).
"""
import numpy as np

from eetjit.reference.registry import register

from ._common import int_list, normalize_axes, opt

_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def pad(x: np.ndarray, pads, mode: str = "constant", value=0, axes=None) -> np.ndarray:
    x = np.asarray(x)
    pads = int_list(pads)
    axes = list(range(x.ndim)) if axes is None else normalize_axes(int_list(axes), x.ndim, "Pad")
    if len(pads) != 2 * len(axes):
        raise ValueError(f"Pad: expected {2 * len(axes)} pads for axes {axes}, got {pads}")
    if mode not in _MODES:
        raise ValueError(f"Pad: unsupported mode {mode!r}")
    before = [0] * x.ndim
    after = [0] * x.ndim
    for k, a in enumerate(axes):
        before[a] = pads[k]
        after[a] = pads[k + len(axes)]
    # 1) crop the negative pads
    crop = tuple(slice(max(-b, 0), x.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(zip(before, after)))
    x = x[crop]
    # 2) pad the positive ones
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(before, after)]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=np.asarray(value, dtype=x.dtype))
    return np.pad(x, widths, mode=_MODES[mode])


@register("Pad")
def _pad(inputs, attrs, opset):
    mode = attrs.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode == "wrap" and opset < 19:
        raise ValueError("Pad: mode 'wrap' needs opset 19")
    if opset < 11:
        pads = attrs.get("pads", attrs.get("paddings"))
        return [pad(inputs[0], pads, mode, attrs.get("value", 0.0))]
    v = opt(inputs, 2)
    value = 0 if v is None else np.asarray(v).reshape(-1)[0] if np.size(v) else 0
    axes = opt(inputs, 3) if opset >= 18 else None
    return [pad(inputs[0], inputs[1], mode, value, axes)]
