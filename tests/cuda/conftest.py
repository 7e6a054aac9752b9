"""tests/cuda: the CUDA backend's kernels against the NumPy references, and generation end to end.

Without a GPU the kernels run in Numba's CUDA simulator: NUMBA_ENABLE_CUDASIM=1 is set here, before anything
imports numba.cuda (it reads the variable once, at import). The simulator runs every GPU thread as a Python
thread, so these tests use tiny shapes and few examples. With a GPU, `pytest -m gpu` runs the `gpu`-marked
variants for real (bigger shapes, the warp-shuffle kernels, cuBLASLt, CUDA graphs).
"""
import os
import shutil
import sys

import pytest


def _has_gpu() -> bool:
    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


if "NUMBA_ENABLE_CUDASIM" not in os.environ and not _has_gpu():
    if "numba.cuda" in sys.modules:
        raise RuntimeError("numba.cuda was imported before tests/cuda/conftest.py could enable the simulator")
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    # numba.cuda.core.config is numba.core.config, read when `numba` is imported: a test module collected before
    # this one (tests/codegen imports Numba) may have read it without the variable. Numba re-reads it at its next
    # compile; a simulator test that runs first in its process (pytest-xdist) must not wait for that.
    if "numba.core.config" in sys.modules:
        sys.modules["numba.core.config"].reload_config()

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


@pytest.fixture(scope="session", autouse=True)
def kernel_cache_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eetjit-cuda-cache")
    old = os.environ.get("EETJIT_CACHE_DIR")
    os.environ["EETJIT_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("EETJIT_CACHE_DIR", None)
    else:
        os.environ["EETJIT_CACHE_DIR"] = old


# Every kernel test runs twice by name: "sim" (default run, simulator) and "gpu" (marked: `pytest -m gpu` on the
# GPU machine). Each skips in the other kind of process.
WHERE = [pytest.param("sim", id="sim"), pytest.param("gpu", id="gpu", marks=pytest.mark.gpu)]


@pytest.fixture(params=WHERE)
def where(request):
    if (request.param == "sim") != SIMULATED:
        pytest.skip("simulator run" if request.param == "sim" else "needs a GPU (run with -m gpu there)")
    return request.param
