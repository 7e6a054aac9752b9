"""Launches of cached cubins without Numba (eetjit.backends.cuda_direct): the argument specs against Numba's own
typing and array ABI, the cubin files a launch through Numba leaves and what a later process accepts of them.
The launches themselves need a GPU: test_cuda_generate.py's warm start (pytest -m gpu) runs a whole generate on
them in a fresh process that never imports Numba."""
import functools
import hashlib
import json

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cuda_helpers import SETTINGS

from eetjit.backends import cuda_direct
from eetjit.backends.cuda_direct import DirectKernel, c_strides, describe_all, numba_spec, spec_name, value_spec


class FakeDeviceArray:
    """A NumPy array seen as a device array: its __cuda_array_interface__ (strides None where C-contiguous, as CuPy
    gives them), as value_spec and the parameters read it."""

    def __init__(self, a):
        self.a, self.dtype = a, a.dtype
        self.__cuda_array_interface__ = {"shape": a.shape, "typestr": a.dtype.str, "data": (a.ctypes.data, False),
                                         "strides": None if a.flags.c_contiguous else a.strides, "version": 3}


def _views(rng, dtype, shape):
    """A contiguous array of `shape` and views of it: F-ordered, strided, sliced to size-1 axes, with a new size-1
    axis (stride 0), broadcast along one (stride 0), empty."""
    a = (rng.standard_normal(shape) + 0.5).astype(dtype)
    out = [a, np.asfortranarray(a), a[..., ::2] if a.shape[-1] > 1 else a, a[:1], a[None], np.asfortranarray(a)[None],
           np.broadcast_to(a[:1], (3,) + a.shape[1:]), a[:0]]
    if a.ndim >= 2:
        out += [a.swapaxes(0, 1), a[:, :1], a[:, None]]
    return out


@functools.lru_cache(maxsize=None)
def _dummyarray():
    """numba-cuda's own dummyarray module, loaded from its file once."""
    import importlib.util
    from pathlib import Path
    import numba_cuda
    path = Path(numba_cuda.__file__).parent / "numba" / "cuda" / "cudadrv" / "dummyarray.py"
    spec = importlib.util.spec_from_file_location("_eetjit_test_dummyarray", path)
    dummy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dummy)
    return dummy


def _numba_device_type(a):
    """How Numba-CUDA types the device array it makes of `a`'s interface (numba.cuda.as_cuda_array), without a GPU:
    the contiguity flags of its own dummyarray module (loaded from numba-cuda's files: the simulator replaces that
    package), the layout rule of DeviceNDArrayBase._numba_type_ (C, else F, else A; A for any zero stride of a
    non-empty array). test_device_array_spec_is_numbas_type checks against the real one on a GPU."""
    from numba.core import types
    from numba.np.numpy_support import from_dtype
    dummy = _dummyarray()
    cai = FakeDeviceArray(a).__cuda_array_interface__
    strides = cai["strides"] or c_strides(a.shape, a.itemsize)
    flags = dummy.Array.from_desc(0, a.shape, strides, a.itemsize).flags
    broadcast = 0 in strides and a.size != 0
    layout = "C" if flags["C_CONTIGUOUS"] and not broadcast else "F" if flags["F_CONTIGUOUS"] and not broadcast \
        else "A"
    return types.Array(from_dtype(a.dtype), a.ndim, layout)


@SETTINGS
@example(dtype="float16", shape=[3, 1, 2], seed=0)      # a size-1 axis moved to the front: C by NumPy's rule
@given(dtype=st.sampled_from(["float16", "float32", "uint16", "int32", "int64", "uint8"]),
       shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1))
def test_array_spec_is_numbas_device_type(dtype, shape, seed):
    """A device array's spec names what Numba's CUDA target makes of the same array interface: dtype, ndim and
    layout (C or F where the strides say so, size-1 axes not counting, an empty array both; A for a zero stride of a
    non-empty array, a broadcast, even along a size-1 axis; C where both). A launch is cached under its spec only
    where Numba's types agree at run time (DirectKernel.save), and a launch finds only that spec."""
    for a in _views(np.random.default_rng(seed), dtype, tuple(shape)):
        assert value_spec(FakeDeviceArray(a)) == numba_spec(_numba_device_type(a)), (a.shape, a.strides)


@pytest.mark.parametrize("value", [3, -7, 2**40, True, False, 1.5, np.float32(0.25), np.int32(-5), np.int64(9),
                                   np.uint32(4), np.bool_(True), np.float64(2.5)])
def test_scalar_spec_is_numbas_type(value):
    from numba.cuda.typing.typeof import typeof
    assert value_spec(value) == numba_spec(typeof(value)) is not None


@pytest.mark.parametrize("value", [np.zeros(3), (1, 2), None, "s", 2**70, np.float16(1.0)])
def test_what_a_spec_cannot_describe_goes_to_numba(value):
    """A host array, a tuple, None, a string, an int past int64, a float16 scalar: no spec (Numba launches them)."""
    assert value_spec(value) is None


def test_parameters_lay_arrays_out_as_numbas_array_model():
    """An array's parameters follow the members of Numba-CUDA's ArrayModel (meminfo, parent, nitems, itemsize, data,
    shape, strides; the tuples flattened), the strides those Numba's device array has (C-contiguous ones where the
    interface gives None); scalars become their C types, bools stay bools."""
    import ctypes
    import subprocess
    import sys
    # in a process of its own: importing Numba-CUDA's models registers them where Numba's CPU compiler finds them
    fields = subprocess.run(
        [sys.executable, "-c", "import numba.cuda.datamodel.cuda_models\n"
         "from numba.core import types\nfrom numba.cuda.datamodel.registry import default_manager\n"
         "print(default_manager.lookup(types.Array(types.float32, 2, 'A'))._fields)"],
        capture_output=True, text=True, timeout=120)
    assert fields.stdout.strip() == str(("meminfo", "parent", "nitems", "itemsize", "data", "shape", "strides")), \
        fields.stderr[-1000:]
    a = np.ones((3, 8), np.float16)
    b = a[:, ::2]
    spec, params = describe_all([FakeDeviceArray(b), FakeDeviceArray(a), 5, np.float32(0.5), True])
    assert spec[:2] == (("a", "float16", 2, "A"), ("a", "float16", 2, "C"))
    assert params[:9] == [0, 0, 12, 2, b.ctypes.data, 3, 4, 16, 4]
    assert params[9:18] == [0, 0, 24, 2, a.ctypes.data, 3, 8, 16, 2]
    assert isinstance(params[18], ctypes.c_int64) and params[18].value == 5
    assert isinstance(params[19], ctypes.c_float) and params[19].value == 0.5
    assert params[20] is True


class _Lib:
    def __init__(self, cubin, setup=()):
        self._cubin, self._setup_functions, self._teardown_functions = cubin, list(setup), []

    def get_cubin(self):
        return self._cubin


class _Overload:
    """A Numba _Kernel as save() reads it: a plain launch unless told otherwise."""

    def __init__(self, lib, **launch):
        self._codelibrary, self.entry_name = lib, "_Z6kernel"
        self.cooperative, self.debug, self.extensions, self.shared_memory_carveout = False, False, [], None
        self.__dict__.update(launch)


class _Dispatcher:
    def __init__(self, overloads):
        self.overloads = overloads


def _typed(args):
    from numba.cuda.typing.typeof import typeof
    return tuple(typeof(a.a if isinstance(a, FakeDeviceArray) else a) for a in args)


class _Code:
    """cuda.core's ObjectCode, faked (loading a cubin needs a GPU): records each load."""
    loaded: list = []

    @classmethod
    def from_cubin(cls, data, name=""):
        return type("O", (), {"get_kernel": lambda self, sym: cls.loaded.append((data, sym, name)) or "K"})()


def test_a_launch_through_numba_leaves_its_cubin_and_a_later_process_loads_it(tmp_path, monkeypatch):
    """save() writes the cubin and its symbol under a name of (module, capability, spec), once per spec; a fresh
    DirectKernel (another process) finds them for arguments of that spec and loads them through cuda.core (faked
    here), and not for arguments of another spec or another card."""
    args = [FakeDeviceArray(np.zeros((2, 8), np.float16)), 7]
    types = _typed(args)
    _Code.loaded = []
    monkeypatch.setattr(cuda_direct, "cuda_core", lambda: (None, None, _Code, None))
    calls = []
    first = DirectKernel("eetjit_cuda_op_abc", tmp_path, (9, 0),
                         lambda: calls.append(1) or _Dispatcher({types: _Overload(_Lib(b"\x7fELF-cubin"))}))
    assert first.find(args) is None and first.wants(args)       # nothing cached yet: Numba launches it
    assert first.save(types, args) and calls == [1]
    assert not first.wants(args) and not first.save(types, args)        # once a spec
    spec, params = describe_all(args)
    meta = json.loads((tmp_path / f"{spec_name('eetjit_cuda_op_abc', (9, 0), spec)}.json").read_text())
    assert meta["symbol"] == "_Z6kernel" and meta["cc"] == [9, 0]
    later = DirectKernel("eetjit_cuda_op_abc", tmp_path, (9, 0), lambda: pytest.fail("Numba imported"))
    found = later.find(args)
    assert found[0] == "K" and found[1][:5] == params[:5] and found[1][-1].value == 7
    assert _Code.loaded == [(b"\x7fELF-cubin", "_Z6kernel", "eetjit_cuda_op_abc")]
    assert later.find([FakeDeviceArray(np.zeros((2, 8), np.float32)), 7]) is None     # another dtype: not cached
    assert DirectKernel("eetjit_cuda_op_abc", tmp_path, (8, 0), None).find(args) is None   # another card


@pytest.mark.parametrize("why", ["types", "setup", "cooperative", "debug", "extensions", "carveout"])
def test_no_cubin_is_written_where_a_plain_launch_of_it_would_differ(tmp_path, why):
    """Numba's types not matching the spec (the launch would run other code), a module with load-time setup
    functions (which a bare cubin load skips), a cooperative launch, a debug kernel (Numba reads its error code
    back), argument extensions (another layout), a shared-memory carveout: nothing is written, and the kernel
    keeps launching through Numba."""
    args = [FakeDeviceArray(np.zeros(4, np.float32)), 3]
    types = _typed(args)
    launch = {"cooperative": {"cooperative": True}, "debug": {"debug": True}, "extensions": {"extensions": [object()]},
              "carveout": {"shared_memory_carveout": 50}}.get(why, {})
    lib = _Lib(b"c", setup=[print] if why == "setup" else ())
    offered = _typed([FakeDeviceArray(np.zeros(4, np.float32)), np.int32(3)]) if why == "types" else types
    k = DirectKernel("m", tmp_path, (9, 0), lambda: _Dispatcher({offered: _Overload(lib, **launch)}))
    assert not k.save(offered, args)
    assert not list(tmp_path.iterdir())
    assert not k.wants(args)      # and it is not typed again at every launch


def test_a_stale_or_foreign_spec_file_is_not_loaded(tmp_path, monkeypatch):
    """A spec file of another format, spec or card under the expected name (a hand-copied cache, a hash clash), or
    beside a cubin it was not written with (two processes' writes crossing): not loaded, the launch goes to
    Numba."""
    monkeypatch.setattr(cuda_direct, "cuda_core", lambda: (None, None, _Code, None))
    _Code.loaded = []
    args = [FakeDeviceArray(np.zeros(4, np.float32))]
    spec = describe_all(args)[0]
    name = spec_name("m", (9, 0), spec)
    (tmp_path / f"{name}.cubin").write_bytes(b"c")
    good = {"format": cuda_direct.FORMAT, "symbol": "k", "spec": spec, "cc": [9, 0],
            "sha256": hashlib.sha256(b"c").hexdigest()}
    for bad in ({"format": 0}, {"spec": [["a", "float16", 1, "C"]]}, {"cc": [8, 0]}, {"sha256": "0" * 64}):
        (tmp_path / f"{name}.json").write_text(json.dumps({**good, **bad}))
        assert DirectKernel("m", tmp_path, (9, 0), None).find(args) is None
    (tmp_path / f"{name}.json").write_text("{not json")
    assert DirectKernel("m", tmp_path, (9, 0), None).find(args) is None
    assert _Code.loaded == []
    (tmp_path / f"{name}.json").write_text(json.dumps(good))         # and the good one is
    assert DirectKernel("m", tmp_path, (9, 0), None).find(args)[0] == "K"


def test_device_launch_routes_cached_cubins_around_numba(tmp_path, monkeypatch):
    """Device.launch with a DirectKernel (on a GPU; here a simulator Device given a fake launcher and fake device
    arrays): a cached spec launches the cubin with its parameters, or in a dry run (deferring) does nothing and
    records nothing; a spec not cached goes to Numba's dispatcher (recorded in a dry run, launched otherwise),
    which is then offered to save() once."""
    from eetjit.backends.cuda_device import Device
    monkeypatch.setattr(cuda_direct, "cuda_core", lambda: (None, None, _Code, None))
    dev = Device()
    launched, numba_calls, saved = [], [], []
    dev.direct = lambda kernel, grid, block, params, cluster: launched.append((kernel, grid, block, params, cluster))
    monkeypatch.setattr(dev, "xp", type("xp", (), {"ndarray": FakeDeviceArray, "uint16": np.uint16}))
    args = [FakeDeviceArray(np.zeros((2, 8), np.float16)), 7]
    types = _typed(args)

    class Numba(_Dispatcher):
        def typeof_pyval(self, a):
            return _typed([a])[0]

        def __getitem__(self, config):
            return lambda *a: numba_calls.append((config, a))
    numba = Numba({types: _Overload(_Lib(b"cubin"))})
    k = DirectKernel("m", tmp_path, (9, 0), lambda: numba)
    monkeypatch.setattr(k, "save", lambda t, a: saved.append(t) or DirectKernel.save(k, t, a))
    with dev.deferring() as recorded:
        dev.launch(k, 3, 64, *args)
    assert recorded == [(numba, None)] and not launched and not numba_calls     # the simulator: no types
    dev.launch(k, 3, 64, *args)
    assert len(numba_calls) == 1 and saved == [types] and not launched
    dev.launch(k, (3, 2), 64, *args)       # cached now: the cubin, with describe_all's parameters
    want = describe_all(args)[1]
    assert [x[:3] + x[4:] for x in launched] == [("K", (3, 2), 64, 0)]
    assert launched[0][3][:-1] == want[:-1] and launched[0][3][-1].value == want[-1].value == 7
    with dev.deferring() as recorded:
        dev.launch(k, 3, 64, *args)
    assert recorded == [] and len(launched) == 1 and len(numba_calls) == 1 and saved == [types]


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


@pytest.mark.gpu
def test_device_array_spec_is_numbas_type():
    """On a GPU, against Numba itself: value_spec of CuPy arrays and views (F-ordered, strided, size-1 axes, new
    axes, broadcasts, empty) equals Numba's type of as_cuda_array of them, and their parameters' strides are the
    device array's."""
    from cuda_helpers import SIMULATED
    if SIMULATED:
        pytest.skip("needs a GPU")
    import cupy
    from numba import cuda
    from numba.cuda.typing.typeof import typeof
    from eetjit.backends.cuda_direct import describe
    base = cupy.arange(2 * 3 * 4, dtype=cupy.float16).reshape(2, 3, 4)
    views = [base, cupy.asfortranarray(base), base[..., ::2], base[:1], base[None], cupy.asfortranarray(base)[None],
             cupy.broadcast_to(base[:1], (3, 3, 4)), base[:0], base.swapaxes(0, 1), base[:, :1], base[:, None],
             base.view(cupy.uint16), base[0, 0], base[1:, 1:, 1:]]
    for v in views:
        dev = cuda.as_cuda_array(v, sync=False)
        spec, params = describe(v)
        assert spec == numba_spec(typeof(dev)), (v.shape, v.strides)
        assert params[-2 * v.ndim:] == [*dev.shape, *dev.strides] if v.ndim else params[-1] == v.data.ptr
        assert params[4] == dev.device_ctypes_pointer.value or v.size == 0


def test_cluster_launch_config(monkeypatch):
    """The cluster launches' LaunchConfig factory (sm_90 on): the grid given in blocks, counted in clusters from
    cuda.core 0.4 on (in blocks before), the cluster along x, programmatic stream serialization where the device
    uses it; none before sm_90, with EETJIT_CLUSTERS=0, without cuda.core, or where a cluster does not divide the
    grid's x."""
    import cuda.core
    from eetjit.backends import cuda_device
    made = []

    def config(**kw):
        made.append(kw)
        return kw
    monkeypatch.setattr(cuda_direct, "cuda_core", lambda: (None, config, None, None))
    monkeypatch.delenv("EETJIT_CLUSTERS", raising=False)
    assert cuda_device._cluster_launch_config(80, True) is None
    make = cuda_device._cluster_launch_config(90, True)
    monkeypatch.setattr(cuda.core, "__version__", "0.3.2")
    old = cuda_device._cluster_launch_config(90, False)
    assert make(2, (4, 1, 6), 128, shmem_size=0) == dict(grid=(2, 1, 6), cluster=(2, 1, 1), block=128,
                                                          programmatic_stream_serialization=True, shmem_size=0)
    assert old(3, 6, 64) == dict(grid=(6, 1, 1), cluster=(3, 1, 1), block=64)
    with pytest.raises(ValueError, match="multiple"):
        make(4, (6, 1, 1), 32)
    monkeypatch.setenv("EETJIT_CLUSTERS", "0")
    assert cuda_device._cluster_launch_config(90, True) is None
    monkeypatch.delenv("EETJIT_CLUSTERS")
    monkeypatch.setattr(cuda_direct, "cuda_core", lambda: None)
    assert cuda_device._cluster_launch_config(90, True) is None
