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
    """The cases shared round robin by one process per CPU (at most 4): Numba compiles one kernel at a time, and
    this is the longest test of the suite (~180 s in one process on the 2-core CI machine, 138 kernels)."""
    from eetjit.codegen.workers import usable_cpus
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    n = max(1, min(4, usable_cpus()))
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), "--quick", f"--shard={i}/{n}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(n)]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = [p.returncode for p in procs]
    if all(c == 77 for c in codes):
        pytest.skip(outs[0][0].strip())
    for c, (out, err) in zip(codes, outs):
        assert c == 0, out[-4000:] + err[-2000:]
    assert sum(int(out.split(" kernels compiled")[0].split()[-1]) for out, _ in outs) > 100, outs
