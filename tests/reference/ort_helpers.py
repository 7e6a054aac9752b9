"""Run one ONNX node through onnxruntime and through our reference kernel, and compare."""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import helper, numpy_helper

import eetjit.reference.ops  # noqa: F401  (registers every kernel)
from eetjit.reference.ops._dtypes import numpy_to_onnx
from eetjit.reference.registry import lookup

# 25 examples keeps the suite fast; EETJIT_HYPOTHESIS_EXAMPLES=500 for a deeper local run.
SETTINGS = settings(
    max_examples=int(os.environ.get("EETJIT_HYPOTHESIS_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

_SESSION_OPTIONS = ort.SessionOptions()
_SESSION_OPTIONS.log_severity_level = 3
_SESSION_OPTIONS.intra_op_num_threads = 1
_SESSION_OPTIONS.inter_op_num_threads = 1


def _attr_for_onnx(v):
    return numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v


def make_model(op_type: str, inputs, attrs: dict, opset: int, n_outputs: int) -> onnx.ModelProto:
    inputs = list(inputs)
    while inputs and inputs[-1] is None:
        # drop trailing omitted optionals instead of naming them "": onnxruntime 1.32
        # segfaults on e.g. LayerNormalization(X, Scale, "")
        inputs.pop()
    names, graph_inputs = [], []
    for i, x in enumerate(inputs):
        if x is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        graph_inputs.append(helper.make_tensor_value_info(name, numpy_to_onnx(x.dtype), x.shape))
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, **{k: _attr_for_onnx(v) for k, v in attrs.items()})
    graph = helper.make_graph([node], "single", graph_inputs, [onnx.ValueInfoProto(name=o) for o in outs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_ort(op_type: str, inputs, attrs=None, opset: int = 18, n_outputs: int = 1) -> list[np.ndarray]:
    model = make_model(op_type, inputs, attrs or {}, opset, n_outputs)
    sess = ort.InferenceSession(model.SerializeToString(), _SESSION_OPTIONS, providers=["CPUExecutionProvider"])
    feed = {f"in{i}": x for i, x in enumerate(inputs) if x is not None}
    return sess.run(None, feed)


def run_ref(op_type: str, inputs, attrs=None, opset: int = 18, n_outputs: int = 1) -> list[np.ndarray]:
    kernel = lookup("", op_type)
    assert kernel is not None, f"no reference kernel registered for {op_type}"
    # pass copies so a kernel that mutates its inputs is caught by the ORT comparison
    args = [None if x is None else np.array(x, copy=True) for x in inputs]
    outs = kernel(args, dict(attrs or {}), opset)
    assert isinstance(outs, list), f"{op_type}: kernel must return a list"
    return outs[:n_outputs]


def assert_same(got: np.ndarray, want: np.ndarray, rtol: float = 0.0, atol: float = 0.0, what: str = ""):
    assert isinstance(got, np.ndarray), f"{what}: kernel returned {type(got)}, not an ndarray"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != ORT's {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != ORT's {want.shape}"
    if rtol == 0 and atol == 0:
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True, err_msg=what)


def check(op_type: str, inputs, attrs=None, opset: int = 18, n_outputs: int = 1,
          rtol: float = 0.0, atol: float = 0.0, ref_attrs=None, normalize=None) -> list[np.ndarray]:
    """Compare our kernel with onnxruntime on one node. ``ref_attrs`` are extra attributes
    only our kernel sees (e.g. the caller-supplied ``_num_outputs`` for Split);
    ``normalize(i, array)`` maps both sides' output i before comparing (for documented,
    harmless representation differences)."""
    attrs = attrs or {}
    want = run_ort(op_type, inputs, attrs, opset, n_outputs)
    got = run_ref(op_type, inputs, {**attrs, **(ref_attrs or {})}, opset, n_outputs)
    if normalize is not None:
        want = [normalize(i, w) for i, w in enumerate(want)]
        got = [normalize(i, g) if isinstance(g, np.ndarray) else g for i, g in enumerate(got)]
    assert len(got) == n_outputs, f"{op_type}: kernel gave {len(got)} outputs, wanted {n_outputs}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert_same(g, w, rtol, atol, f"{op_type} opset {opset} output {i} attrs {attrs}")
    return got


# ----------------------------------------------------------------------------- strategies

def _not_all_zero(a: np.ndarray) -> bool:
    return a.size == 0 or a.dtype == np.bool_ or bool(np.any(a != 0))


def shapes(min_dims=1, max_dims=4, min_side=1, max_side=4):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def floats(shape=None, lo=-4.0, hi=4.0, dtype=np.float32, **shape_kw):
    """Random float arrays (every element drawn, never all zeros)."""
    width = np.dtype(dtype).itemsize * 8
    lo, hi = float(np.array(lo, dtype)), float(np.array(hi, dtype))   # exactly representable bounds
    elements = st.floats(lo, hi, width=width, allow_subnormal=False, allow_nan=False)
    return hnp.arrays(dtype, shapes(**shape_kw) if shape is None else shape,
                      elements=elements, fill=st.nothing()).filter(_not_all_zero)


def ints(shape=None, lo=-20, hi=20, dtype=np.int64, **shape_kw):
    return hnp.arrays(dtype, shapes(**shape_kw) if shape is None else shape,
                      elements=st.integers(lo, hi), fill=st.nothing()).filter(_not_all_zero)


def bools(shape=None, **shape_kw):
    return hnp.arrays(np.bool_, shapes(**shape_kw) if shape is None else shape,
                      elements=st.booleans(), fill=st.nothing())


def small_int_floats(shape=None, lo=-3, hi=3, dtype=np.float32, **shape_kw):
    """Integer-valued floats: many ties and exact equalities."""
    return hnp.arrays(dtype, shapes(**shape_kw) if shape is None else shape,
                      elements=st.integers(lo, hi).map(float), fill=st.nothing()).filter(_not_all_zero)
