"""The one place that knows whether the CUDA backend runs on a GPU or on Numba's CUDA simulator.

GPU: device arrays are CuPy arrays on one CuPy stream. A kernel whose machine code was cached for the launch's
argument spec launches through cuda.core without Numba (eetjit.backends.cuda_direct: the warm start never imports
Numba); any other launches through Numba on `numba.cuda.external_stream(stream.ptr)`, with each array handed over
as a Numba device array (`as_cuda_array(sync=False)`: the default would synchronize the stream, which breaks
CUDA-graph capture), and its cubin is cached after. GEMMs are cuBLASLt through nvmath-python
(eetjit.backends.cuda_gemm).
Simulator (NUMBA_ENABLE_CUDASIM=1, CI without a GPU): "device" arrays are NumPy arrays, kernels run in the
simulator, GEMMs are np.matmul, graphs are not captured (the decode step runs eagerly on its fixed buffers).

Everything else in the backend is written once against `Device`; the templates get `sim` as a specialization
constant (shared-memory reductions instead of warp shuffles, bit tricks through NumPy for bfloat16).
bfloat16 arrays carry ml_dtypes' bfloat16 dtype (so cuBLASLt sees bf16) and reach kernels as uint16 views.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import re
import sys

import numpy as np

from eetjit.backends.cuda_direct import DirectKernel
from eetjit.errors import InputError

try:  # bfloat16 storage: ml_dtypes' NumPy dtype (a dependency of eetjit), understood by CuPy >= 14
    from ml_dtypes import bfloat16 as BFLOAT16
except ImportError:  # pragma: no cover
    BFLOAT16 = None


def storage_dtype(name: str) -> np.dtype:
    """The NumPy dtype that arrays of a session dtype ("float32" | "float16" | "bfloat16") carry."""
    if name == "float32":
        return np.dtype(np.float32)
    if name == "float16":
        return np.dtype(np.float16)
    if name == "bfloat16":
        if BFLOAT16 is None:
            raise InputError("dtype 'bfloat16' needs the ml_dtypes package")
        return np.dtype(BFLOAT16)
    raise InputError(f"dtype must be 'float32', 'float16' or 'bfloat16', got {name!r}")


def is_bfloat16(dtype) -> bool:
    return BFLOAT16 is not None and np.dtype(dtype) == np.dtype(BFLOAT16)


# The simulator's twin of gemv_nk's L2 prefetch (templates/cuda/_macros.j2 prefetch_fn) records each piece here as
# (bytes of the array, offset, size), the latest 65536, so tests can check what a launch asked for.
SIM_PREFETCHED: collections.deque = collections.deque(maxlen=1 << 16)


class CaptureError(RuntimeError):
    """Something that cannot be part of a CUDA graph happened while capturing (an allocation, a host copy)."""


class Device:
    """Memory, stream, launches and host transfers of the CUDA backend (GPU or simulator)."""

    def __init__(self):
        self.simulated = simulator_on()
        self.capturing = False
        self.collecting: list | None = None   # see keep()
        # While a list (deferring()): launches and GEMMs only record what they would compile (kernel, argument
        # types), for eetjit.codegen.workers to compile in other processes before the real run
        self.deferred: list | None = None
        # True while an ExecutionPlan traces a new input signature: every op output is a temporary that dies after
        # its last reader, so GEMM plans made for those buffers must not be kept (they would hold them alive)
        self.transient = False
        if self.simulated:
            self.xp = np
            self.stream = None
            self.sm_count = 1
            self.mma_sync = True          # the simulator's twins of the tensor-core instructions (templates)
            self.bulk_prefetch = True     # ... and of cp.async.bulk.prefetch.L2 (it checks each range)
            self._pdl_config = None
            self._cluster_config = None
        else:
            try:
                import cupy
            except ImportError as e:  # pragma: no cover - GPU machines only
                raise InputError("device='cuda' needs CuPy (pip install eetjit[cuda]); for CPU-only testing "
                                 "set NUMBA_ENABLE_CUDASIM=1") from e
            self.xp = cupy
            self.stream = cupy.cuda.Stream(non_blocking=True)
            self._numba = None          # (external stream, as_cuda_array): Numba's, made at its first launch
            self.sm_count = int(cupy.cuda.Device().attributes["MultiProcessorCount"])
            # mma.sync.m16n8k16 with float16 and bfloat16 inputs: sm_80 and later
            self.mma_sync = int(cupy.cuda.Device().compute_capability) >= 80
            # cp.async.bulk.prefetch.L2 (gemv_nk's prefetch of the next weight): sm_90 and later
            self.bulk_prefetch = int(cupy.cuda.Device().compute_capability) >= 90
            # programmatic dependent launch (sm_90 and later; templates wait with griddepcontrol.wait)
            self._pdl_config = _pdl_launch_config(int(cupy.cuda.Device().compute_capability))
        self.pdl = not self.simulated and self._pdl_config is not None
        if not self.simulated:
            # thread-block cluster launches (sm_90 and later; attention_vec merges a row's splits in one)
            self._cluster_config = _cluster_launch_config(int(cupy.cuda.Device().compute_capability), self.pdl)
        self.clusters = self._cluster_config is not None
        # launches of cached cubins without Numba (cuda_direct); None: every launch goes through Numba
        self.direct = None
        if not self.simulated:
            from eetjit.backends import cuda_direct
            if cuda_direct.enabled():
                try:
                    self.direct = cuda_direct.Launcher(self.stream.ptr, self.pdl, self._cluster_config)
                except Exception:   # noqa: BLE001 - no usable cuda.core: Numba launches everything
                    self.direct = None

    # --- memory ------------------------------------------------------------------------------------
    def empty(self, shape, dtype):
        if self.capturing:
            raise CaptureError(f"allocation of {np.dtype(dtype).name}{list(shape)} while capturing a CUDA graph")
        if self.simulated:
            return np.empty(shape, dtype)
        with self.stream:
            return self.xp.empty(shape, dtype)

    def zeros(self, shape, dtype):
        a = self.empty(shape, dtype)
        self.fill_zero(a)
        return a

    def fill_zero(self, a):
        if self.simulated:
            a[...] = 0
        else:
            with self.stream:
                a.view(np.uint8 if a.dtype.itemsize == 1 else _uint(a.dtype.itemsize)).fill(0)

    def on_device(self, x) -> bool:
        return isinstance(x, np.ndarray) if self.simulated else isinstance(x, self.xp.ndarray)

    def host_readable(self, x) -> bool:
        """True for arrays whose values the host can read without a transfer (always true in the simulator)."""
        return isinstance(x, (np.ndarray, np.generic, int, float))

    def upload(self, x, dtype=None):
        """x (host or device) as a device array of `dtype` (a copy only when needed)."""
        dtype = np.dtype(dtype) if dtype is not None else None
        if self.on_device(x):
            if dtype is None or x.dtype == dtype:
                return x
            if self.capturing:
                raise CaptureError("dtype conversion while capturing a CUDA graph")
            with stream_context(self):
                return x.astype(dtype)
        if self.capturing:
            raise CaptureError("host-to-device copy while capturing a CUDA graph")
        host = np.asarray(x) if dtype is None else np.asarray(x).astype(dtype, copy=False)
        if self.simulated:
            return np.array(host, order="C", copy=True)
        with self.stream:
            out = self.xp.empty(host.shape, host.dtype)
            out.set(np.ascontiguousarray(host), stream=self.stream)
            return out

    # float32 elements of the device buffer upload_cast stages through (32 MB; kept for the process)
    STAGING_ELEMENTS = 1 << 23

    def upload_cast(self, host, dtype, cols: int | None = None):
        """A float host array as a new device array of float16/float32 `dtype`, its last axis zero-padded to
        `cols`. The conversion (and the padding) happen on the device: the host only reads `host`, in blocks of
        rows copied through one reused float32 staging buffer. For the weights at compile time: converting 160 M
        float32 values to float16 on the host and allocating the copies cost ~1 s there (GPU.md)."""
        dtype = np.dtype(dtype)
        if self.simulated or dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
            raise InputError(f"upload_cast converts to float16/float32 on a GPU, not to {dtype}")
        if self.capturing:
            raise CaptureError("host-to-device copy while capturing a CUDA graph")
        host = np.ascontiguousarray(host, np.float32)
        n = host.shape[-1] if host.ndim else 1
        cols = n if cols is None else int(cols)
        if host.size == 0:
            with self.stream:
                return self.xp.zeros(host.shape[:-1] + (cols,) if host.ndim else (), dtype)
        rows = host.reshape(-1, n)
        with self.stream:
            out = self.xp.empty((rows.shape[0], cols), dtype)
            if cols > n:
                out[:, n:].fill(0)
            stage = getattr(self, "_staging", None)
            if stage is None or stage.size < n:
                stage = self._staging = self.xp.empty(max(self.STAGING_ELEMENTS, n), np.float32)
            step = max(1, stage.size // n)
            for r0 in range(0, rows.shape[0], step):
                block = rows[r0:r0 + step]
                staged = stage[:block.size].reshape(block.shape)
                staged.set(block, stream=self.stream)        # the stream orders the next block's copy after this cast
                self.xp.copyto(out[r0:r0 + block.shape[0], :n], staged, casting="unsafe")
        return out.reshape(host.shape[:-1] + (cols,)) if host.ndim else out.reshape(())

    def fill(self, dst, value) -> None:
        """dst[...] = value, queued on the stream (a scalar launch argument: unlike a copy from pageable host
        memory, it does not wait for the work already queued)."""
        if self.simulated:
            dst[...] = value
        else:
            with self.stream:
                dst.fill(value)

    def set(self, dst, host) -> None:
        """Copy host values into the device array `dst` (same shape)."""
        if self.capturing:
            raise CaptureError("host-to-device copy while capturing a CUDA graph")
        host = np.ascontiguousarray(np.asarray(host, dtype=dst.dtype).reshape(dst.shape))
        if self.simulated:
            dst[...] = host
        else:
            dst.set(host, stream=self.stream)

    def to_host(self, x) -> np.ndarray:
        if not self.on_device(x) or self.simulated:
            return np.asarray(x)
        return self.to_host_async(x)()

    def to_host_async(self, x):
        """Queue a copy of the device array x into page-locked host memory behind the work already on the stream,
        and return a function that waits for that copy alone and returns the host array. The host can queue more
        work meanwhile (the generator queues the next decode step before it reads this one's tokens). In the
        simulator the copy is made now."""
        if not self.on_device(x) or self.simulated:
            host = np.array(x)
            return lambda: host
        if self.capturing:
            raise CaptureError("device-to-host copy while capturing a CUDA graph")
        if x.size == 0:
            host = np.empty(x.shape, x.dtype)
            return lambda: host
        # Into page-locked memory (CuPy's pinned pool; the block goes back to the pool when the array dies): the
        # copy runs at the bus's speed, where a fresh pageable array is copied through a staging buffer and
        # page-faulted in (a 50 MB encoder output: ~2 ms against ~25 ms on the H100 machine).
        import cupy
        import cupyx
        host = cupyx.empty_pinned(x.shape, x.dtype)
        with self.stream:       # a strided x's contiguous copy behind the kernels that wrote x, not on CuPy's default
            x = self.xp.ascontiguousarray(x)        # stream (which does not wait for this non-blocking one)
        x.get(stream=self.stream, out=host, blocking=False)
        done = cupy.cuda.Event(block=False, disable_timing=True)
        done.record(self.stream)

        def wait():
            done.synchronize()
            return host
        return wait

    def copy(self, dst, src) -> None:
        """dst[...] = src on the device (a strided copy kernel on the GPU, captured like any launch)."""
        if self.simulated:
            dst[...] = src
        else:
            with self.stream:
                self.xp.copyto(dst, src)

    def synchronize(self) -> None:
        if not self.simulated:
            self.stream.synchronize()

    # --- kernels -----------------------------------------------------------------------------------
    def kernel_arg(self, x):
        """What a Numba kernel is handed for x: arrays as device arrays (bfloat16 as its uint16 bits)."""
        if self.simulated:
            if isinstance(x, np.ndarray):
                if is_bfloat16(x.dtype):
                    x = x.view(np.uint16)
                # The simulator copies arguments in and out and refuses strided or read-only ones: such inputs
                # (the q/k/v slices of a fused projection, broadcasts) travel as copies; outputs are contiguous.
                if not (x.flags.c_contiguous or x.flags.f_contiguous) or not x.flags.writeable:
                    x = np.array(x, order="C")
            return x
        if isinstance(x, self.xp.ndarray):
            return self._numba_fns()[1](self._bits(x), sync=False)
        return x

    def _bits(self, x):
        """A device array as a kernel reads it: bfloat16 as its uint16 bits (a view), anything else as it is."""
        return x.view(self.xp.uint16) if isinstance(x, self.xp.ndarray) and is_bfloat16(x.dtype) else x

    def _numba_fns(self):
        """(Numba's view of the stream, numba.cuda.as_cuda_array): imports Numba's CUDA target the first time."""
        if self._numba is None:
            from numba import cuda
            self._numba = (cuda.external_stream(self.stream.ptr), cuda.as_cuda_array)
        return self._numba

    def launch(self, kernel, grid, block, *args, cluster: int = 0) -> None:
        """Launch kernel[grid, block](*args) on the stream; cluster > 0: in thread-block clusters of that many
        blocks along x (grid x a multiple of it; only where self.clusters)."""
        if cluster and not self.clusters:
            raise RuntimeError("a cluster launch where this device or cuda.core cannot launch clusters")
        grid = tuple(int(g) for g in grid) if isinstance(grid, tuple) else int(grid)
        if (math.prod(grid) if isinstance(grid, tuple) else grid) == 0:
            return
        block = tuple(int(b) for b in block) if isinstance(block, tuple) else int(block)
        # the backend hands out DirectKernels only where self.direct is set (CudaBackend.kernel)
        direct = kernel if isinstance(kernel, DirectKernel) else None
        if direct is not None:      # a cubin cached for these arguments' spec launches without Numba (cuda_direct)
            raw = [self._bits(a) for a in args]
            found = direct.find(raw)
            if found is not None:
                if self.deferred is None:     # a dry run: nothing to compile
                    self.direct(found[0], grid, block, found[1], cluster)
                return
            kernel = direct.dispatcher
        converted = [self.kernel_arg(a) for a in args]
        if self.deferred is not None:        # a dry run: record (the simulator's kernels have no types)
            types = None if self.simulated else tuple(kernel.typeof_pyval(a) for a in converted)
            if types is None or types not in kernel.overloads:
                self.deferred.append((kernel, types))
            return
        # Numba launches through cuda.core's LaunchConfig, looked up in its dispatcher module at each launch: for
        # this launch it carries the cluster dims and/or programmatic stream serialization (every template renders
        # with pdl=True then, so the kernel waits for its predecessor itself)
        config = functools.partial(self._cluster_config, cluster) if cluster else self._pdl_config
        if self.simulated:
            kernel[grid, block](*converted)
        elif config is None:
            kernel[grid, block, self._numba_fns()[0]](*converted)
        else:
            from numba.cuda import dispatcher
            plain, dispatcher.LaunchConfig = dispatcher.LaunchConfig, config
            try:
                kernel[grid, block, self._numba_fns()[0]](*converted)
            finally:
                dispatcher.LaunchConfig = plain
        if direct is not None and direct.wants(raw):     # cache its cubin for launches without Numba
            direct.save(tuple(kernel.typeof_pyval(a) for a in converted), raw)

    @contextlib.contextmanager
    def deferring(self):
        """Within: kernel launches and GEMMs do nothing; each launch of a kernel not yet compiled for its argument
        types is recorded in the list this yields, as (dispatcher, types). Outputs keep whatever their memory
        held: for a dry run whose only product is that list."""
        if self.capturing or self.deferred is not None:
            raise RuntimeError("deferring() while capturing or deferring")
        self.deferred = []
        try:
            yield self.deferred
        finally:
            self.deferred = None

    # --- graphs ------------------------------------------------------------------------------------
    def keep(self, obj) -> None:
        """Register an object that launches rely on beyond the op that made it (per-op scratch, GEMM plans and
        their workspaces). While a decode step is being set up, `collecting` is a list that the step keeps with
        its graph, so what the graph points to outlives any eviction by the op."""
        if self.collecting is not None:
            self.collecting.append(obj)

    def capture(self, fn):
        """Run fn() under stream capture and return the instantiated graph (GPU only). Nothing may allocate or
        copy from the host meanwhile (CaptureError)."""
        if self.simulated:
            raise CaptureError("the CUDA simulator cannot capture graphs")
        self.stream.synchronize()
        self.capturing = True
        try:
            self.stream.begin_capture()
            try:
                with _NoPoolAllocation():     # a CuPy temporary would be freed (and reused) under the graph
                    fn()
            finally:
                graph = self.stream.end_capture()
        finally:
            self.capturing = False
        return graph

    def replay(self, graph) -> None:
        graph.launch(self.stream)


class _NoPoolAllocation:
    """Within: any CuPy memory-pool allocation raises CaptureError (a CuPy operation that makes a temporary)."""

    def __enter__(self):
        import cupy

        class Hook(cupy.cuda.MemoryHook):
            name = "eetjit-capture"

            def malloc_preprocess(self, **kw):
                raise CaptureError(f"a CuPy allocation of {kw.get('size')} bytes while capturing a CUDA graph")

            def alloc_preprocess(self, **kw):
                raise CaptureError(f"a CuPy allocation of {kw.get('mem_size')} bytes while capturing a CUDA graph")
        self._hook = Hook()
        self._hook.__enter__()

    def __exit__(self, *exc):
        return self._hook.__exit__(*exc)


PDL_ENV = "EETJIT_PDL"      # "0": launch every kernel after its predecessor completes (no programmatic launch)


def _sm90_launch_config(compute_capability: int, env: str):
    """cuda.core's LaunchConfig for a launch option of sm_90 and later, or None: before sm_90, with $env = 0, or
    where cuda.core cannot be imported."""
    if compute_capability < 90 or os.environ.get(env, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    from eetjit.backends.cuda_direct import cuda_core
    core = cuda_core()
    return None if core is None else core[1]


def _pdl_launch_config(compute_capability: int):
    """A LaunchConfig factory that sets programmatic stream serialization, or None where that is off: before
    sm_90, with EETJIT_PDL=0, or with a cuda.core that has no such option. cuda.core's LaunchConfig, which Numba
    launches through too (its dispatcher module's LaunchConfig is swapped for this one around a launch)."""
    make = _sm90_launch_config(compute_capability, PDL_ENV)
    if make is None:
        return None
    try:
        make(grid=1, block=1, programmatic_stream_serialization=True)
    except (AttributeError, TypeError, ValueError):
        return None
    return functools.partial(make, programmatic_stream_serialization=True)


CLUSTERS_ENV = "EETJIT_CLUSTERS"      # "0": launch no thread-block clusters (the kernels merge through global memory)


def _cluster_launch_config(compute_capability: int, pdl: bool):
    """A factory (cluster, grid, block, **options) -> cuda.core LaunchConfig of a launch in clusters of `cluster`
    blocks along x, `grid` counted in blocks (its x a multiple of `cluster`), with programmatic stream
    serialization where pdl; None before sm_90, with EETJIT_CLUSTERS=0, or with a cuda.core that cannot. From
    cuda.core 0.4 on, a LaunchConfig with a cluster counts its grid in clusters (earlier ones in blocks)."""
    make = _sm90_launch_config(compute_capability, CLUSTERS_ENV)
    if make is None:
        return None
    try:
        import cuda.core
        version = tuple(int(x) for x in re.findall(r"\d+", cuda.core.__version__)[:2])
        make(grid=1, cluster=1, block=1)
    except Exception:   # noqa: BLE001 - any failure of the probe (a cuda.core error too): no cluster launches
        return None
    per_cluster = version >= (0, 4)
    extra = {"programmatic_stream_serialization": True} if pdl else {}

    def config(cluster, grid, block, **options):
        g = (grid, 1, 1) if isinstance(grid, int) else tuple(grid) + (1,) * (3 - len(grid))
        if g[0] % cluster:
            raise ValueError(f"grid {g}: its x is not a multiple of the cluster's {cluster} blocks")
        if per_cluster:
            g = (g[0] // cluster, *g[1:])
        return make(grid=g, cluster=(cluster, 1, 1), block=block, **extra, **options)
    return config


def simulator_on() -> bool:
    """Whether kernels run on Numba's CUDA simulator: Numba's config where Numba is imported (tests reload it),
    else NUMBA_ENABLE_CUDASIM as Numba reads it (so a GPU process need not import Numba to know)."""
    config = sys.modules.get("numba.core.config")
    if config is not None:
        return bool(config.ENABLE_CUDASIM)
    try:
        return bool(int(os.environ.get("NUMBA_ENABLE_CUDASIM", "0") or 0))
    except ValueError:
        return False


def _uint(itemsize):
    return {2: np.uint16, 4: np.uint32, 8: np.uint64}[itemsize]


class stream_context:
    """`with stream_context(device):` makes the device's stream CuPy's current one (nothing in the simulator)."""

    def __init__(self, device: Device):
        self.stream = device.stream

    def __enter__(self):
        if self.stream is not None:
            self.stream.__enter__()

    def __exit__(self, *exc):
        if self.stream is not None:
            return self.stream.__exit__(*exc)


@functools.lru_cache(maxsize=None)
def get_device() -> Device:
    """The process's Device (one CuPy stream for the process; the simulator needs none)."""
    return Device()
