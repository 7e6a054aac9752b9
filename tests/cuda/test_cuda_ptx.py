"""The GPU variant of the CUDA templates (warp shuffles, libdevice bfloat16 conversions) is not what the
simulator runs: compile it to sm_90 PTX here, without a GPU (tests/cuda/cuda_ptx_check.py; skipped where NVVM
and NVRTC are not installed: pip install nvidia-nvvm nvidia-cuda-nvrtc)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("cuda_ptx_check.py")


def test_gpu_variants_compile_to_ptx():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, env=env,
                       timeout=600)
    if r.returncode == 77:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
