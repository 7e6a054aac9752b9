import numpy as np

from eetjit.fused._math import layer_norm
from eetjit.reference.registry import register


def embedding(ids_BS, positions, wte_VE, wpe_PE=None, type_ids_BS=None, wtt_TE=None, gamma=None, beta=None,
              epsilon=1e-5):
    h = wte_VE[ids_BS]                                     # (B, S, E)
    if wpe_PE is not None:
        h = h + wpe_PE[np.broadcast_to(positions, ids_BS.shape)]
    if wtt_TE is not None:
        h = h + wtt_TE[type_ids_BS]
    if gamma is not None:
        h = layer_norm(h, gamma, beta, epsilon)
    return h


@register("Embedding", "eet")
def _embedding(inputs, attrs, opset):
    args = list(inputs) + [None] * (8 - len(inputs))
    return [embedding(*args, epsilon=attrs.get("epsilon", 1e-5))]
