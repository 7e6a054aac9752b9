"""Launches of cached cubins without Numba (eetjit.backends.cuda_direct): the argument specs against Numba's own
typing and array ABI, the cubin files a launch through Numba leaves and what a later process accepts of them.
The launches themselves need a GPU: test_cuda_generate.py's warm start (pytest -m gpu) runs a whole generate on
them in a fresh process that never imports Numba."""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cuda_helpers import SETTINGS

from eetjit.backends import cuda_direct
from eetjit.backends.cuda_direct import DirectKernel, numba_spec, pack, spec_name, value_spec


class FakeDeviceArray:
    """What value_spec and pack read of a CuPy array, over a NumPy array (data.ptr: its host address)."""

    def __init__(self, a):
        self.a = a
        self.__cuda_array_interface__ = {"shape": a.shape, "typestr": a.dtype.str, "data": (a.ctypes.data, False),
                                         "strides": a.strides, "version": 3}
        self.dtype, self.ndim, self.flags, self.size = a.dtype, a.ndim, a.flags, a.size
        self.itemsize, self.shape, self.strides = a.itemsize, a.shape, a.strides
        self.data = type("Ptr", (), {"ptr": a.ctypes.data})()


def _views(rng, dtype, shape):
    """A contiguous array of `shape` and views of it that are F-ordered, strided, sliced down to size-1 axes."""
    a = (rng.standard_normal(shape) + 0.5).astype(dtype)
    out = [a, np.asfortranarray(a), a[..., ::2] if a.shape[-1] > 1 else a, a[:1]]
    if a.ndim >= 2:
        out += [a.swapaxes(0, 1), a[:, :1]]
    return out


@SETTINGS
@given(dtype=st.sampled_from(["float16", "float32", "uint16", "int32", "int64", "uint8"]),
       shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1))
def test_array_spec_is_numbas_type(dtype, shape, seed):
    """A device array's spec names what Numba's CUDA typeof makes of the same array: dtype, ndim and layout (C, F or
    A, with size-1 axes and 1-d arrays both C and F as NumPy's flags say). A launch is cached under its spec only
    where the two agree (DirectKernel.save), so this checks that they usually do."""
    from numba.cuda.typing.typeof import typeof
    for a in _views(np.random.default_rng(seed), dtype, tuple(shape)):
        assert value_spec(FakeDeviceArray(a)) == numba_spec(typeof(a)), (a.shape, a.strides)


@pytest.mark.parametrize("value", [3, -7, 2**40, True, False, 1.5, np.float32(0.25), np.int32(-5), np.int64(9),
                                   np.uint32(4), np.bool_(True), np.float64(2.5)])
def test_scalar_spec_is_numbas_type(value):
    from numba.cuda.typing.typeof import typeof
    assert value_spec(value) == numba_spec(typeof(value)) is not None


@pytest.mark.parametrize("value", [np.zeros(3), (1, 2), None, "s", 2**70, np.float16(1.0)])
def test_what_a_spec_cannot_describe_goes_to_numba(value):
    """A host array, a tuple, None, a string, an int past int64, a float16 scalar: no spec (Numba launches them)."""
    assert value_spec(value) is None


def test_pack_lays_arrays_out_as_numbas_array_model():
    """An array's parameters follow the members of Numba-CUDA's ArrayModel (meminfo, parent, nitems, itemsize, data,
    shape, strides; the tuples flattened); scalars become their C types, bools stay bools."""
    import ctypes
    import numba.cuda.datamodel.cuda_models  # noqa: F401 - registers ArrayModel
    from numba.core import types
    from numba.cuda.datamodel.registry import default_manager
    assert default_manager.lookup(types.Array(types.float32, 2, "A"))._fields == \
        ("meminfo", "parent", "nitems", "itemsize", "data", "shape", "strides")
    a = np.ones((3, 8), np.float16)[:, ::2]
    x = FakeDeviceArray(a)
    args = [x, 5, np.float32(0.5), True]
    params = pack(args, tuple(value_spec(v) for v in args))
    assert params[:9] == [0, 0, 12, 2, a.ctypes.data, 3, 4, 16, 4]
    assert isinstance(params[9], ctypes.c_int64) and params[9].value == 5
    assert isinstance(params[10], ctypes.c_float) and params[10].value == 0.5
    assert params[11] is True


class _Lib:
    def __init__(self, cubin, setup=()):
        self._cubin, self._setup_functions, self._teardown_functions = cubin, list(setup), []

    def get_cubin(self):
        return self._cubin


class _Overload:
    def __init__(self, lib):
        self._codelibrary, self.entry_name = lib, "_Z6kernel"


class _Dispatcher:
    def __init__(self, overloads):
        self.overloads = overloads


def _typed(args):
    from numba.cuda.typing.typeof import typeof
    return tuple(typeof(a.a if isinstance(a, FakeDeviceArray) else a) for a in args)


def test_a_launch_through_numba_leaves_its_cubin_and_a_later_process_loads_it(tmp_path, monkeypatch):
    """save() writes the cubin and its symbol under a name of (module, capability, spec), once per spec; a fresh
    DirectKernel (another process) finds them for arguments of that spec and loads them through cuda.core (faked
    here: loading a cubin needs a GPU), and not for arguments of another spec."""
    args = [FakeDeviceArray(np.zeros((2, 8), np.float16)), 7]
    types = _typed(args)
    loaded = []

    class Code:
        @staticmethod
        def from_cubin(data, name=""):
            return type("O", (), {"get_kernel": lambda self, sym: loaded.append((data, sym, name)) or "K"})()
    monkeypatch.setattr(cuda_direct, "cuda_core", lambda: (None, None, Code, None))
    calls = []
    first = DirectKernel("eetjit_cuda_op_abc", tmp_path, (9, 0),
                         lambda: calls.append(1) or _Dispatcher({types: _Overload(_Lib(b"\x7fELF-cubin"))}))
    assert first.find(args) is None                     # nothing cached yet: Numba launches it
    assert first.save(types, args) and calls == [1]
    assert not first.save(types, args)                  # once a spec
    spec = tuple(value_spec(a) for a in args)
    meta = json.loads((tmp_path / f"{spec_name('eetjit_cuda_op_abc', (9, 0), spec)}.json").read_text())
    assert meta["symbol"] == "_Z6kernel" and meta["cc"] == [9, 0]
    later = DirectKernel("eetjit_cuda_op_abc", tmp_path, (9, 0), lambda: pytest.fail("Numba imported"))
    assert later.find(args) == (spec, "K")
    assert loaded == [(b"\x7fELF-cubin", "_Z6kernel", "eetjit_cuda_op_abc")]
    assert later.find([FakeDeviceArray(np.zeros((2, 8), np.float32)), 7]) is None     # another dtype: not cached
    assert DirectKernel("eetjit_cuda_op_abc", tmp_path, (8, 0), None).find(args) is None   # another card


def test_no_cubin_is_written_where_numba_typed_otherwise_or_the_module_needs_setup(tmp_path):
    """A spec that Numba's types do not match (the launch would run other code), or a module with load-time setup
    functions (which a bare cubin load would skip): nothing is written, and the kernel keeps launching through
    Numba."""
    args = [FakeDeviceArray(np.zeros(4, np.float32)), 3]
    types = _typed(args)
    other = _typed([FakeDeviceArray(np.zeros(4, np.float32)), np.int32(3)])
    k = DirectKernel("m", tmp_path, (9, 0), lambda: _Dispatcher({other: _Overload(_Lib(b"c"))}))
    assert not k.save(other, args)
    k = DirectKernel("m", tmp_path, (9, 0), lambda: _Dispatcher({types: _Overload(_Lib(b"c", setup=[print]))}))
    assert not k.save(types, args)
    assert not list(tmp_path.iterdir())


def test_a_stale_or_foreign_spec_file_is_not_loaded(tmp_path, monkeypatch):
    """A spec file of another format, spec or card under the expected name (a hand-copied cache, a hash clash) is
    not loaded: the launch goes to Numba."""
    monkeypatch.setattr(cuda_direct, "cuda_core", lambda: pytest.fail("a stale cubin was loaded"))
    args = [FakeDeviceArray(np.zeros(4, np.float32))]
    spec = tuple(value_spec(a) for a in args)
    name = spec_name("m", (9, 0), spec)
    (tmp_path / f"{name}.cubin").write_bytes(b"c")
    for meta in ({"format": 0, "symbol": "k", "spec": spec, "cc": [9, 0]},
                 {"format": cuda_direct.FORMAT, "symbol": "k", "spec": [["a", "float16", 1, "C"]], "cc": [9, 0]},
                 {"format": cuda_direct.FORMAT, "symbol": "k", "spec": spec, "cc": [8, 0]}):
        (tmp_path / f"{name}.json").write_text(json.dumps(meta))
        assert DirectKernel("m", tmp_path, (9, 0), None).find(args) is None
    (tmp_path / f"{name}.json").write_text("{not json")
    assert DirectKernel("m", tmp_path, (9, 0), None).find(args) is None


def test_the_knob_turns_direct_launches_off(monkeypatch):
    monkeypatch.setenv("EETJIT_DIRECT_LAUNCH", "0")
    assert not cuda_direct.enabled()
    monkeypatch.setenv("EETJIT_DIRECT_LAUNCH", "1")
    assert cuda_direct.enabled()


@pytest.mark.gpu
def test_a_strided_read_back_waits_for_the_work_before_it():
    """Device.to_host of a strided view makes its contiguous copy on the backend's stream, behind the work queued
    there. It made it on CuPy's default stream, which does not wait for that non-blocking stream: with launches
    as cheap as the direct ones, a split output (a column slice) could be read before the GEMV that wrote it ran
    (a bfloat16 NormLinear with split outputs failed that way on the H200, session 19)."""
    from cuda_helpers import SIMULATED
    if SIMULATED:
        pytest.skip("needs a GPU")
    from eetjit.backends.cuda_device import get_device
    dev = get_device()
    a = dev.zeros((8192, 8192), np.float32)          # 256 MB: the fill takes long enough to be overtaken
    for value in (1.0, 2.0, 3.0):
        dev.fill(a, value)
        assert (dev.to_host(a[:, ::4096]) == value).all()
