"""GatherND: gather slices of ``data`` addressed by the last axis of ``indices``.

With b = batch_dims, data: [B..., D...] and indices: [B..., I..., k] (k <= rank(data) - b),
out[B..., I...] = data[B..., idx[0], ..., idx[k-1]]  -> shape B... + I... + D[k:].
"""
import numpy as np

from eetjit.reference.registry import register


def gather_nd(data: np.ndarray, indices: np.ndarray, batch_dims: int = 0) -> np.ndarray:
    data, indices = np.asarray(data), np.asarray(indices).astype(np.int64)
    b = int(batch_dims)
    k = indices.shape[-1]
    if data.shape[:b] != indices.shape[:b]:
        raise ValueError(f"GatherND: batch dims differ {data.shape[:b]} vs {indices.shape[:b]}")
    if k > data.ndim - b:
        raise ValueError(f"GatherND: index depth {k} exceeds data rank {data.ndim} - batch_dims {b}")
    batch_shape = data.shape[:b]
    n_batch = int(np.prod(batch_shape, dtype=np.int64))
    flat_data = data.reshape((n_batch,) + data.shape[b:])            # [Nb, D...]
    flat_idx = indices.reshape((n_batch, -1, k))                      # [Nb, Ni, k]
    addressed = np.array(data.shape[b:b + k], dtype=np.int64)
    if np.any((flat_idx < -addressed) | (flat_idx >= addressed)):
        raise ValueError("GatherND: index out of range")
    flat_idx = np.where(flat_idx < 0, flat_idx + addressed, flat_idx)
    rows = []
    for n in range(n_batch):
        coords = tuple(flat_idx[n, :, j] for j in range(k))            # k arrays of [Ni]
        rows.append(flat_data[n][coords])                              # [Ni, D[k:]...]
    tail = data.shape[b + k:]
    out = np.stack(rows) if rows else np.empty((0, flat_idx.shape[1]) + tail, data.dtype)
    return out.reshape(indices.shape[:-1] + tail)


@register("GatherND")
def _gather_nd(inputs, attrs, opset):
    return [gather_nd(inputs[0], inputs[1], int(attrs.get("batch_dims", 0)))]
