"""CpuBackend plumbing: backend lookup, fallback to the reference executor, PadInfo, the serial launch rule."""
import numba
import numpy as np
import pytest

from eetjit.backends import get_backend
from eetjit.backends.cpu import MIN_PARALLEL_WORK, CpuBackend, launch
from eetjit.errors import InputError
from eetjit.ir import Graph

from .helpers import assert_close, reference, single_node, values


def test_get_backend():
    assert isinstance(get_backend("cpu", verbose=False), CpuBackend)
    with pytest.raises(InputError, match="'tpu'"):
        get_backend("tpu")


def test_plain_onnx_nodes_fall_back_to_the_reference(backend):
    g = Graph("add")
    a, b = g.value("a", np.float32, (2, 3)), g.value("b", np.float32, (2, 3))
    node = g.add_node("Add", [a, b])
    op = backend.prepare(node, g)
    assert op.fallback
    x, y = np.ones((2, 3), np.float32), np.full((2, 3), 2, np.float32)
    np.testing.assert_array_equal(op([x, y])[0], x + y)


def test_pad_info(backend):
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    g, node = single_node("PadInfo", [mask])
    op = backend.prepare(node, g)
    assert not op.fallback
    assert_close(op([mask]), reference(g, node, [mask]))


def test_small_work_runs_serially_and_restores_the_thread_count(backend):
    before = numba.get_num_threads()
    seen = []
    launch(lambda: seen.append(numba.get_num_threads()), 1)
    launch(lambda: seen.append(numba.get_num_threads()), MIN_PARALLEL_WORK)
    assert seen == [1, before] and numba.get_num_threads() == before
    rng = np.random.default_rng(0)
    inputs = [values(rng, (1, 32)), values(rng, (32,)), values(rng, (32,))]   # a decode-sized row
    g, node = single_node("LayerNorm", inputs, {"epsilon": 1e-5}, const={1, 2})
    backend.prepare(node, g)(inputs)
    assert numba.get_num_threads() == before


def test_output_buffer_is_checked(backend):
    rng = np.random.default_rng(0)
    inputs = [values(rng, (4, 32)), values(rng, (32,)), values(rng, (32,))]
    g, node = single_node("LayerNorm", inputs, {"epsilon": 1e-5}, const={1, 2})
    with pytest.raises(InputError, match=r"C-contiguous float32\[4, 32\]"):
        backend.prepare(node, g)(inputs, out=[np.empty((32, 4), np.float32).T])
