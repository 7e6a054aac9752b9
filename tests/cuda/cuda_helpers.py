"""Helpers of the CUDA kernel tests: sizes per run kind, random values, one-node graphs, tolerances.

(tests/cuda has no __init__.py on purpose: a package named `cuda` would shadow NVIDIA's `cuda` namespace
package that numba-cuda imports. Modules here have names of their own: cuda_helpers, test_cuda_*.)
"""
import os

import numpy as np
from hypothesis import HealthCheck, settings

from codegen.helpers import reference, single_node  # noqa: F401  (one-node graphs, shared with tests/codegen)

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")   # set by conftest.py

# The simulator is slow (a Python thread per GPU thread): few examples there, more on the GPU.
EXAMPLES = int(os.environ.get("EETJIT_TEST_EXAMPLES", 6 if SIMULATED else 12))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Tolerances of a kernel against the float32 NumPy reference, per storage dtype (inputs are rounded to the dtype
# first, so these cover the rounding of the outputs and of intermediates the kernel stores).
TOL = {"float32": dict(rtol=2e-5, atol=2e-5), "float16": dict(rtol=2e-2, atol=2e-2),
       "bfloat16": dict(rtol=8e-2, atol=8e-2)}


def pick(sim, gpu):
    """A sample set by run kind."""
    return sim if SIMULATED else gpu


def values(rng, shape, dtype=np.float32):
    """Random floats in [-2, -0.1] U [0.1, 2]: never zero, so a kernel that drops a term shows."""
    return (rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 2.0, size=shape)).astype(dtype)


def rounded(x, dtype):
    """x rounded to the storage dtype and back to float32 (what the kernel sees)."""
    from eetjit.backends.cuda_device import storage_dtype
    return np.asarray(x, np.float32).astype(storage_dtype(dtype)).astype(np.float32)


def run_cuda(backend, graph, node, inputs, out=None):
    """Run the node on the CUDA backend and bring its outputs to the host as float32."""
    got = backend.prepare(node, graph)(list(inputs), out)
    return [backend.to_host(g) for g in got]


def assert_close(got, want, dtype="float32", scale=1.0):
    assert len(got) == len(want)
    tol = {k: v * scale for k, v in TOL[dtype].items()}
    for g, w in zip(got, want):
        g = np.asarray(g, np.float32)
        w = np.asarray(w, np.float32)
        assert g.shape == w.shape, (g.shape, w.shape)
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, w, **tol)


_backends = {}


def get_backend(dtype="float32"):
    """One CudaBackend per dtype for the whole run (kernels compile once)."""
    from eetjit.backends.cuda import CudaBackend
    if dtype not in _backends:
        _backends[dtype] = CudaBackend(dtype=dtype, verbose=False)
    return _backends[dtype]
