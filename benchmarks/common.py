"""What every suite shares: model files, timing, the environment record, the table, JSON and the chart."""
from __future__ import annotations

import datetime
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
OUT = BENCH / "out"
CHARTS = BENCH / "charts"
LARGE = ROOT / "graphs" / "large"
SEED = 0                      # the export's default seed: build_model(family, "base", SEED, attn) = the ONNX weights
FLAVOR, ATTN = "ts17", "eager"
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- models -------------------------------------------------------------------------------------------
def export_module():
    """graphs/export.py as a module (build_model, make_config)."""
    spec = importlib.util.spec_from_file_location("graphs_export", ROOT / "graphs" / "export.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def model_path(family: str) -> Path:
    """graphs/large/{family}-ts17-eager.onnx, exported once (base size, seed 0) and reused."""
    path = LARGE / f"{family}-{FLAVOR}-{ATTN}.onnx"
    if not path.is_file():
        log(f"[bench] exporting {path.name} (base size, once; graphs/large is git-ignored) ...")
        cmd = [sys.executable, str(ROOT / "graphs" / "export.py"), "--size", "base", "--family", family,
               "--flavor", FLAVOR, "--attn", ATTN, "--out", str(LARGE)]
        subprocess.run(cmd, check=True, cwd=ROOT)
    return path


def torch_model(family: str, attn: str = ATTN):
    """The Hugging Face model behind the ONNX file (same weights), fp32, eval mode."""
    return export_module().build_model(family, "base", SEED, attn)


# --- timing ---------------------------------------------------------------------------------------------
def time_call(fn, warmup: int, reps: int) -> list[float]:
    """Seconds per call of `fn()`, `reps` samples after `warmup` untimed calls (GC off while timing)."""
    for _ in range(warmup):
        fn()
    samples = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
    finally:
        if gc_was:
            gc.enable()
    return samples


def summary(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples),
            "samples": samples}


def settle(seconds: float = 0.3) -> None:
    """Let the previous peer's spinning worker threads (OpenBLAS, OpenMP, ORT) go idle before the next one."""
    time.sleep(seconds)


def _jiffies() -> tuple[int, int, int]:
    """(busy, total) CPU time of the whole machine and this process's own CPU time, in clock ticks."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)          # idle + iowait
    total = sum(fields[:8])                                            # guest time is already in user
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return total - idle, total, int(own[11]) + int(own[12])            # utime + stime


def others_busy(interval: float = 0.5) -> float | None:
    """Fraction of the machine's CPU time that other processes used over `interval` seconds (0..1)."""
    try:
        b0, t0, s0 = _jiffies()
        time.sleep(interval)
        b1, t1, s1 = _jiffies()
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, ((b1 - b0) - (s1 - s0)) / max(1, t1 - t0))


QUIET = {"threshold": 0.15, "max_wait_s": 90.0}     # set by run.py from --quiet-threshold / --max-wait


def wait_for_quiet() -> dict:
    """Wait (up to QUIET["max_wait_s"]) until other processes use under QUIET["threshold"] of the CPUs:
    on a small shared machine one busy neighbour takes half of a 2-core box and every 2-thread pool stalls."""
    t = time.perf_counter()
    busy = others_busy()
    while busy is not None and busy > QUIET["threshold"] and time.perf_counter() - t < QUIET["max_wait_s"]:
        time.sleep(2.0)
        busy = others_busy()
    return {"others_busy": None if busy is None else round(busy, 3), "waited_s": round(time.perf_counter() - t, 1)}


def measure_peers(peers: dict, warmup: int, reps: int, rounds: int) -> dict:
    """Time each peer `fn` in `rounds` blocks of `reps` calls (after `warmup`), the peer order reversed every
    round so that a change in the machine's load hits every peer alike. Returns {peer: summary}."""
    names = list(peers)
    samples = {n: [] for n in names}
    quiet = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            settle()
            quiet[n].append(wait_for_quiet())
            samples[n] += time_call(peers[n], warmup if r == 0 else 1, reps)
    return {n: dict(summary(s), before_blocks=quiet[n]) for n, s in samples.items()}


# --- environment ------------------------------------------------------------------------------------------
def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def busy_processes(limit: int = 5) -> list[str]:
    """Other processes using CPU now (ps), to say why a run was noisy."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,comm,args", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=5).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return []
    me = os.getpid()
    rows = []
    for line in out:
        parts = line.split(None, 3)
        if len(parts) < 3 or int(parts[0]) == me or float(parts[1]) < 5.0:
            continue
        rows.append(f"{parts[1]}% {parts[3][:80] if len(parts) > 3 else parts[2]}")
        if len(rows) >= limit:
            break
    return rows


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def thread_pools() -> list[dict]:
    """The native thread pools loaded in this process (threadpoolctl): which BLAS kernel, how many threads."""
    try:
        import threadpoolctl
    except ImportError:
        return [{"note": "threadpoolctl not installed (pip install threadpoolctl)"}]
    keep = ("user_api", "internal_api", "prefix", "num_threads", "architecture", "threading_layer", "version",
            "filepath")
    return [{k: p.get(k) for k in keep if k in p} for p in threadpoolctl.threadpool_info()]


def numba_threading() -> dict:
    import numba
    try:
        layer = numba.threading_layer()
    except ValueError:        # no parallel region ran yet
        layer = None
    return {"threading_layer": layer, "num_threads": numba.get_num_threads(),
            "config_layer": numba.config.THREADING_LAYER}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("eetjit", "numpy", "numba", "onnxruntime", "torch", "transformers", "onnx"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:     # noqa: BLE001 - a peer that is missing is reported, not fatal here
            out[mod] = None
    return out


def environment(machine: str | None) -> dict:
    env = {k: os.environ[k] for k in sorted(os.environ)
           if k.startswith(("OPENBLAS", "OMP_", "GOMP", "MKL_", "NUMBA_", "EETJIT_", "KMP_"))}
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine or f"{os.cpu_count()}-core {platform.machine()} ({cpu_model()})",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "env": env,
        "versions": versions(),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }


def blas_warning() -> str | None:
    set_ = [k for k in BLAS_ENV if os.environ.get(k)]
    if not set_:
        return None
    return (f"{' and '.join(set_)} set: OpenBLAS may run a slower kernel than this CPU allows; for benchmarks run "
            f"`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.run ...` (never in tests/CI)")


# --- output -------------------------------------------------------------------------------------------------
def busiest(timings: dict) -> str:
    """The largest share of the CPUs other processes used just before any timed block of a case, e.g. '3%'."""
    vals = [q["others_busy"] for t in timings.values() for q in t.get("before_blocks", [])
            if q.get("others_busy") is not None]
    return f"{max(vals) * 100:.0f}%" if vals else "?"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def table(header: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(suite: str, data: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{suite}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def save_chart(fig, suite: str) -> list[Path]:
    """benchmarks/out/SUITE.png, and a copy in benchmarks/charts/ (committed) when it is under 200 KB."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{suite}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    paths = [path]
    if path.stat().st_size < 200 * 1024:
        CHARTS.mkdir(parents=True, exist_ok=True)
        dest = CHARTS / path.name
        dest.write_bytes(path.read_bytes())
        paths.append(dest)
    return paths


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
