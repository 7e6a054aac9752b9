"""Helpers of the kernel tests: random values, one-node graphs, the reference run, the tolerance check."""
import numpy as np
from hypothesis import HealthCheck, settings

from eetjit.ir import Graph

# JIT compiles make examples slow and uneven: no deadline; few examples (each new constant is a compile).
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def values(rng, shape, dtype=np.float32):
    """Random floats in [-2, -0.1] U [0.1, 2]: never zero, so a kernel that drops a term shows."""
    return (rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 2.0, size=shape)).astype(dtype)


def single_node(op_type, inputs, attrs=None, const=(), outputs=1):
    """A graph holding one eet node; inputs listed in `const` become initializers (weights)."""
    g = Graph("one-node")
    vals = []
    for i, a in enumerate(inputs):
        if a is None:
            vals.append(None)
        elif i in const:
            vals.append(g.constant(a, f"w{i}"))
        else:
            v = g.value(f"x{i}", a.dtype, a.shape)
            g.inputs.append(v)
            vals.append(v)
    node = g.add_node(op_type, vals, outputs, attrs or {}, domain="eet")
    g.outputs = list(node.outputs)
    return g, node


def reference(graph, node, inputs):
    from eetjit.reference.executor import run_node
    return run_node(node, list(inputs), graph)


def assert_close(got, want, rtol=1e-5, atol=1e-5):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape, (g.shape, w.shape)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
