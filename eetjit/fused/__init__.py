"""The fused operators of the `eet` domain: their contract (below) and NumPy references (one per file).

The rewrite rules emit these ops; the reference executor runs them with the functions here; the generated
kernels (templates/) must compute the same thing. Layouts are the ones the surrounding graph already has, so a
fused op is a drop-in replacement for the subgraph it came from. Shapes: B batch, S sequence, E hidden,
H heads, Hkv key/value heads, D head dim, K/N GEMM dims.

| op            | inputs                                               | attrs                                   | outputs |
|---------------|------------------------------------------------------|-----------------------------------------|---------|
| LayerNorm     | x[..., E], gamma[E], beta[E]?                        | epsilon                                 | y |
| AddLayerNorm  | a[..., E], b (broadcastable), gamma, beta?           | epsilon                                 | y, sum=a+b |
| RMSNorm       | x[..., E], gamma[E]                                  | epsilon                                 | y |
| AddRMSNorm    | a, b, gamma                                          | epsilon                                 | y, sum |
| Linear        | x[..., K], W[K, N], bias[N]?                         | activation: none/gelu_erf/gelu_tanh/relu/silu; split: [N0, N1, ...] (outputs are slices of the last dim) | y (or one per split) |
| NormLinear    | a[..., K] (with W0: [..., K0]), b?, gamma[K], beta?, W[K, N], bias[N]?, W0[K0, K]?, b0[K]? | norm: layer/rms; add: 0/1; epsilon; activation; split; pre: 0/1 | the Linear's outputs, then sum=a+b when add |
| SwiGLU        | x[..., K], W_gate[K, F], W_up[K, F], b_gate?, b_up?  |                                         | silu(x W_gate + b) * (x W_up + b) |
| Embedding     | ids[B, S], positions[B|1, S]?, wte[V, E], wpe[P, E]?, type_ids?, wtt?, gamma?, beta? | epsilon | h[B, S, E] |
| PadInfo       | attention_mask[B, S] (0/1, ones contiguous)          |                                         | ranges[B, 2] int64: first and one-past-last valid column |
| Attention     | q[B, S, H*D], k[B, S, Hkv*D], v[B, S, Hkv*D], ranges[B, 2]? | num_heads, kv_num_heads, head_dim, scale, causal, pad_rows_unused? | y[B, S, H*D] |
| Rotary        | x[B, S, H*D], positions[B|1, S] int64, inv_freq[D/2] | num_heads, head_dim, scaling            | x rotated (rotate-half form) |
| CachedAttention | q, k, v [B, S, ·], k_cache/v_cache[B, Hkv, T, D], start[B], step[1] | as Attention (causal) | y; caches written in place |
| LastToken     | x[B, S, E]                                           |                                         | x[:, -1:, :] |

Attention: query row i of sequence b attends key columns c with ranges[b,0] <= c < ranges[b,1] and, when causal,
c <= i (with S < T, query i sits at column T - S + i). A row with no such column (a pad row) outputs zeros:
pad rows are never read by anything that matters. With pad_rows_unused = 1 (set by the packed encoder plan,
whose Pack after the attention reads only real rows) the rows outside [ranges[b,0], ranges[b,1]) are
unspecified: a backend may leave them unwritten (the reference computes them).
NormLinear: Linear(norm(a + b if add else a)) with the norm's output rounded to the storage dtype, as the unfused
pair computes it (eetjit.plan.norm_linear folds a norm read only by one Linear; b and beta are absent inputs when
unused). With W0 (pre = 1, add = 1; fold_producer_linear) a is first replaced by Linear(a, W0, b0): the summand's
own projection, whose epilogue a backend may fuse with the residual add.
Rotary: angle[b, s, j] = positions[b, s] * inv_freq[j]; cos/sin of the angle (each of the D/2 values used for
both halves) times `scaling` rotate every head: y = x*cos + rotate_half(x)*sin, rotate_half(x) = [-x2, x1].
"""
import importlib
import pkgutil


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("op_"):
            importlib.import_module(f"{__name__}.{info.name}")


_load_all()
