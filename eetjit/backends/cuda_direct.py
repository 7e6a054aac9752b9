"""Launching cached CUDA kernels without Numba: the warm start's path.

Numba compiles a rendered kernel (eetjit/codegen) once per argument types. After it launches one in any process,
`DirectKernel.save` writes the machine code it loaded (the linked cubin) and its entry symbol beside the rendered
files, under kernels/cuda/direct/, per compute capability and argument spec. A later process finds them there and
launches the cubin through cuda.core, the arguments laid out as Numba's kernel ABI lays them out (an array:
meminfo, parent, size, itemsize, data, shape, strides; a scalar as its C value). Such a process never imports
Numba unless a kernel or an argument spec is missing; on the GPU machine Numba's CUDA target costs ~0.47 s of
import and ~0.45 s of lowering registries (scipy.linalg, the fp16/bf16 shims) at each start, all under the GIL
(benchmarks/gpu/NOTES.md, session 19). The launches are cheaper too (no typing of each argument).

A missing cubin, an argument the spec cannot describe (a host array), or any failure to load one sends the launch
to Numba (`Device.launch`), which compiles or loads from its own disk cache as before and, after the launch,
writes the cubin for next time. A spec is described as Numba types the device array it makes of an argument
(its layout rules copied in `describe`, held to Numba's own by tests/cuda/test_cuda_direct.py), and written only
where Numba typed that launch's arguments the same and the kernel launches as a plain cubin would (no load-time
setup, cooperative launch, debug read-back, argument extension or carveout): a later launch of that spec runs the
code Numba would have run, with the parameters it would have passed. Loaded cubins stay loaded for the process (a
captured CUDA graph may point at them). EETJIT_DIRECT_LAUNCH=0 turns the path off (A/B, debugging).
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np

DIRECT_ENV = "EETJIT_DIRECT_LAUNCH"
FORMAT = 1          # bumped when what a spec file says changes

_counts = {"loads": 0, "saves": 0, "launches": 0}
_lock = threading.Lock()
_loaded: list = []          # every cuda.core Kernel loaded: kept for the process (CUDA graphs may point at them)


def enabled() -> bool:
    return os.environ.get(DIRECT_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cuda_core():
    """(launch, LaunchConfig, ObjectCode, Stream) of cuda.core (its top level from 0.6, .experimental before); None
    where it cannot be imported."""
    try:
        from cuda.core import LaunchConfig, ObjectCode, Stream, launch
    except ImportError:
        try:
            from cuda.core.experimental import LaunchConfig, ObjectCode, Stream, launch
        except ImportError:
            return None
    return launch, LaunchConfig, ObjectCode, Stream


def stats() -> dict:
    """Cubins loaded and written, and direct launches, in this process."""
    with _lock:
        return dict(_counts)


def value_spec(x) -> tuple | None:
    """What Numba's typeof would make of a launch argument, as a plain tuple: ("a", dtype, ndim, layout) for a device
    array (anything with __cuda_array_interface__: CuPy), ("b",) for a bool, ("s", dtype) for a number of one of
    _SCALARS' types. None for anything else (a host array, a tuple, a float16 scalar): such a launch goes to Numba."""
    d = describe(x)
    return None if d is None else d[0]


def describe(x) -> tuple | None:
    """(value_spec, kernel parameters) of a launch argument, or None. A device array is typed as Numba types the
    device array it makes of it (numba.cuda.as_cuda_array, DeviceNDArray._numba_type_): its strides are those of
    __cuda_array_interface__ (C-contiguous ones where it gives None), its layout C or F where the strides say so
    (NumPy's rule: size-1 axes do not count; an empty array is both) and A for any zero stride of a non-empty array
    (a broadcast); C where both. Its parameters are Numba's array model (meminfo, parent, size, itemsize, data,
    shape, strides in bytes); a bool is passed as itself, a number as its C type."""
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None:
        dtype = np.dtype(cai["typestr"])
        shape = tuple(int(n) for n in cai["shape"])
        itemsize, size = dtype.itemsize, int(np.prod(shape, dtype=np.int64))
        strides = cai.get("strides")
        strides = c_strides(shape, itemsize) if strides is None else tuple(int(t) for t in strides)
        c, f = _contiguity(shape, strides, itemsize, size)      # neither for a zero stride of a non-empty array
        layout = "C" if c else "F" if f else "A"
        return (("a", dtype.name, len(shape), layout),
                [0, 0, size, itemsize, int(cai["data"][0]), *shape, *strides])
    if isinstance(x, (bool, np.bool_)):
        return ("b",), [bool(x)]
    if isinstance(x, int):
        return (("s", "int64"), [ctypes.c_int64(x)]) if -2**63 <= x < 2**63 else None
    if isinstance(x, float):
        return ("s", "float64"), [ctypes.c_double(x)]
    if isinstance(x, np.generic) and x.dtype.name in _SCALARS:
        return ("s", x.dtype.name), [_SCALARS[x.dtype.name](x)]
    return None


def c_strides(shape, itemsize) -> tuple:
    """The strides in bytes of a C-contiguous array of `shape`."""
    out, step = [], itemsize
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


def _contiguity(shape, strides, itemsize, size) -> tuple[bool, bool]:
    """(C-contiguous, F-contiguous) as Numba's device arrays compute them (numba.cuda.cudadrv.dummyarray)."""
    if not shape or size == 0:
        return True, True
    if 0 in strides:
        return False, False
    c, step = True, itemsize
    for n, t in zip(reversed(shape), reversed(strides)):
        if n != 1:
            c = c and t == step
            step *= n
    f, step = True, itemsize
    for n, t in zip(shape, strides):
        if n != 1:
            if t != step:
                f = False
                break
            step *= n
    return c, f


def describe_all(args) -> tuple | None:
    """(spec, parameters) of a launch's arguments, or None where one cannot be described."""
    spec, params = [], []
    for a in args:
        d = describe(a)
        if d is None:
            return None
        spec.append(d[0])
        params += d[1]
    return tuple(spec), params


def numba_spec(ty) -> tuple | None:
    """value_spec's tuple for a Numba argument type; None for a type it does not describe."""
    from numba.core import types
    from numba.np.numpy_support import as_dtype
    if isinstance(ty, types.Array):
        return ("a", as_dtype(ty.dtype).name, ty.ndim, ty.layout)
    if ty == types.boolean:
        return ("b",)
    if isinstance(ty, (types.Integer, types.Float)) and not isinstance(ty, types.Boolean):
        name = as_dtype(ty).name
        return ("s", name) if name in _SCALARS else None
    return None


_SCALARS = {"int8": ctypes.c_int8, "int16": ctypes.c_int16, "int32": ctypes.c_int32, "int64": ctypes.c_int64,
            "uint8": ctypes.c_uint8, "uint16": ctypes.c_uint16, "uint32": ctypes.c_uint32,
            "uint64": ctypes.c_uint64, "float32": ctypes.c_float, "float64": ctypes.c_double}


def spec_name(module_name: str, cc: tuple, spec: tuple) -> str:
    digest = hashlib.sha256(repr((FORMAT, tuple(cc), spec)).encode()).hexdigest()[:20]
    return f"{module_name}-sm{''.join(map(str, cc))}-{digest}"


class DirectKernel:
    """A rendered kernel as the backend launches it: cubins by argument spec, loaded from `folder` when one was
    written, else Numba's dispatcher (`loader()`, imported on first need)."""

    def __init__(self, module_name: str, folder: Path, cc: tuple, loader):
        self.module_name = module_name
        self.folder = Path(folder)
        self.cc = tuple(cc)
        self._loader = loader
        self._dispatcher = None
        self._found: dict[tuple, object] = {}       # spec -> cuda.core Kernel, or False: none on disk
        self._tried: set = set()                    # specs save() was asked for

    @property
    def dispatcher(self):
        """Numba's dispatcher of the rendered module (imports Numba and the module the first time)."""
        if self._dispatcher is None:
            self._dispatcher = self._loader()
        return self._dispatcher

    def find(self, args):
        """(cuda.core Kernel, kernel parameters) for these launch arguments, or None (launch through Numba)."""
        d = describe_all(args)
        if d is None:
            return None
        k = self._found.get(d[0])
        if k is None:
            k = self._found[d[0]] = self._load(d[0])
        return (k, d[1]) if k else None

    def _load(self, spec):
        name = spec_name(self.module_name, self.cc, spec)
        meta, cubin = self.folder / f"{name}.json", self.folder / f"{name}.cubin"
        if not (meta.is_file() and cubin.is_file()):
            return False
        try:
            info = json.loads(meta.read_text())
            data = cubin.read_bytes()
            # the pair one process wrote (two processes' cubins of a kernel may differ in their symbol names)
            if info.get("format") != FORMAT or tuple(map(tuple, info["spec"])) != spec or \
                    tuple(info["cc"]) != self.cc or info.get("sha256") != hashlib.sha256(data).hexdigest():
                return False
            core = cuda_core()
            if core is None:
                return False
            kernel = core[2].from_cubin(data, name=self.module_name).get_kernel(info["symbol"])
        except Exception:   # noqa: BLE001 - unreadable or stale: Numba launches it (and writes it again)
            return False
        with _lock:
            _counts["loads"] += 1
            _loaded.append(kernel)      # never unloaded: a captured graph may point at it after its kernel dies
        return kernel

    def wants(self, args) -> bool:
        """Whether save() should be offered this launch (its spec describable, not cached, not tried): the caller
        types the arguments only then."""
        d = describe_all(args)
        return d is not None and not self._found.get(d[0]) and d[0] not in self._tried

    def save(self, types, args) -> bool:
        """After Numba launched this kernel with `args` (typed `types`): write its cubin and entry symbol for the
        spec of `args`, where Numba's types say the same and the kernel launches as a plain cubin would (no
        load-time setup, no cooperative launch, no debug error read-back, no argument extensions, no carveout).
        Best effort: False where it wrote nothing."""
        d = describe_all(args)
        if d is None or self._found.get(d[0]) or d[0] in self._tried:
            return False
        spec = d[0]
        self._tried.add(spec)           # once a spec: a failure would fail again
        try:
            if tuple(numba_spec(t) for t in types) != spec:
                return False
            k = self.dispatcher.overloads[tuple(types)]
            lib = k._codelibrary
            if (lib._setup_functions or lib._teardown_functions or getattr(k, "cooperative", True)
                    or getattr(k, "debug", True) or getattr(k, "extensions", True)
                    or getattr(k, "shared_memory_carveout", True) is not None):
                return False
            cubin = lib.get_cubin()
            data = cubin if isinstance(cubin, (bytes, bytearray)) else getattr(cubin, "code", None)
            if not isinstance(data, (bytes, bytearray)):
                return False
            data = bytes(data)
            from eetjit.codegen.cache import _atomic_write
            name = spec_name(self.module_name, self.cc, spec)
            _atomic_write(self.folder / f"{name}.cubin", data)
            _atomic_write(self.folder / f"{name}.json", json.dumps(
                {"format": FORMAT, "symbol": k.entry_name, "spec": spec, "cc": self.cc,
                 "sha256": hashlib.sha256(data).hexdigest()}))
        except Exception:   # noqa: BLE001 - a Numba without these internals: it keeps launching through Numba
            return False
        with _lock:
            _counts["saves"] += 1
        self._found.pop(spec, None)     # the next launch of this spec loads it
        return True


class Launcher:
    """cuda.core launches on one stream, with programmatic stream serialization where `pdl`; cluster launches
    through `cluster_config` (cuda_device._cluster_launch_config's factory)."""

    def __init__(self, stream_ptr: int, pdl: bool, cluster_config=None):
        core = cuda_core()
        if core is None:
            raise ImportError("cuda.core is not importable")
        self._launch, self._config, _, Stream = core
        from_handle = getattr(Stream, "from_handle", None)
        self.stream = from_handle(stream_ptr) if from_handle is not None else _ForeignStream(stream_ptr)
        self.pdl = pdl
        self._cluster_config = cluster_config
        self._configs: dict = {}

    def __call__(self, kernel, grid, block, params, cluster: int = 0) -> None:
        """Launch `kernel` (a cuda.core Kernel) with these parameters (describe_all's); cluster > 0: in clusters
        of that many blocks along x."""
        key = (grid, block, cluster)
        config = self._configs.get(key)
        if config is None:
            if cluster:
                config = self._cluster_config(cluster, grid, block, shmem_size=0)
            else:
                extra = {"programmatic_stream_serialization": True} if self.pdl else {}
                config = self._config(grid=grid, block=block, shmem_size=0, **extra)
            self._configs[key] = config
        self._launch(self.stream, config, kernel, *params)
        _counts["launches"] += 1


class _ForeignStream:
    """A stream handle offered through the __cuda_stream__ protocol (a cuda.core without Stream.from_handle)."""

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __cuda_stream__(self):
        return (0, self.ptr)
