"""Pack / Unpack: moving an encoder's activations between the padded [B, S, F] layout and the packed
[1, N, F] layout of its N real tokens (`index` = flat positions b*S + s of the real tokens, in order)."""
import numpy as np

from eetjit.reference.registry import register


def pack(x_BSF, index_N):
    B, S = x_BSF.shape[:2]
    return x_BSF.reshape(B * S, *x_BSF.shape[2:])[index_N][None]          # (1, N, F)


def unpack(x_1NF, index_N, like_BS):
    B, S = like_BS.shape[:2]
    out = np.zeros((B * S,) + x_1NF.shape[2:], x_1NF.dtype)
    out[index_N] = x_1NF[0]
    return out.reshape((B, S) + x_1NF.shape[2:])                          # (B, S, F), zeros at pads


@register("Pack", "eet")
def _pack(inputs, attrs, opset):
    return [pack(inputs[0], inputs[1])]


@register("Unpack", "eet")
def _unpack(inputs, attrs, opset):
    return [unpack(inputs[0], inputs[1], inputs[2])]
