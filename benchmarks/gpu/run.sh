#!/usr/bin/env bash
# eetjit's GPU check and benchmark, one command, run from the project root on the GPU machine with the wheels
# of shared/GPU.md carried in .whl (numpy 2.4 for numba-cuda, nvmath-python for cuBLASLt):
#
#     bash benchmarks/gpu/run.sh
#
# 1. installs the carried wheels into /tmp/site (nothing can be downloaded there);
# 2. runs `pytest -m gpu` (the CUDA kernels for real: warp shuffles, cuBLASLt, CUDA graphs; generation against
#    Hugging Face);
# 3. exports GPT-2 small (base) to ONNX with graphs/export.py (too big to carry: exported there, ~20 s);
# 4. benchmarks float16 greedy decode (ms/step, batch 1 ctx 64 and batch 32 ctx 512) against Hugging Face generate
#    (default cache and cache_implementation="static") with the bandwidth floor, and prints the table last.
# Knobs: OUT (logs and JSON; the device tool sets it), MODEL_DIR, PYTEST_ARGS, PYTEST_TIMEOUT, JOBS (pytest-xdist
# processes where its wheels are carried, default 8; 1: one process), BENCH_ARGS,
# SKIP_TESTS=1, SKIP_BENCH=1, EETJIT_TEST_EXAMPLES (hypothesis examples per kernel test on the GPU),
# BENCH=decode (default: bench_decode.py) | more (bench_more.py: GPT-2 medium/XL decode, peak memory, prompt pass,
# cold/warm compile) | both; MORE_BUDGET (seconds for bench_more.py, default 450), MORE_ARGS.
set -uo pipefail
OUT=${OUT:-/tmp/eetjit-gpu}
MODEL_DIR=${MODEL_DIR:-/tmp/eetjit-models}
mkdir -p "$OUT" "$MODEL_DIR"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "run.sh: installing the carried wheels (.whl) failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0 PYTHONUNBUFFERED=1
export EETJIT_CACHE_DIR=${EETJIT_CACHE_DIR:-/tmp/eetjit-cache}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 - <<'PY' 2>&1 | tee -a "$OUT/gpu.txt"
import importlib.metadata as md
print(", ".join(f"{n} {md.version(n)}" for n in ("numpy", "numba", "numba-cuda", "cupy-cuda13x", "nvmath-python",
                                                   "torch", "transformers")))
try:
    import cupy, ml_dtypes
    cupy.zeros(2, ml_dtypes.bfloat16)
    print("cupy takes ml_dtypes.bfloat16: yes")
except Exception as e:
    print(f"cupy takes ml_dtypes.bfloat16: no ({type(e).__name__}: {e})")
PY
status=0
# pytest-xdist, where its wheel was carried (pytest_xdist and execnet in .whl): JOBS processes share the tests (the
# kernels' compiles, not the GPU, are the long part; the whole suite took 273-312 s with 8 on an H200, session 18)
XDIST=""
if [ "${JOBS:-8}" -gt 1 ] && python3 -c "import xdist" 2>/dev/null; then XDIST="-n ${JOBS:-8} --dist worksteal"; fi
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${PYTEST_TIMEOUT:-1200}" python3 -m pytest -m gpu -q -rf -p no:cacheprovider --continue-on-collection-errors \
    $XDIST ${PYTEST_ARGS:-} 2>&1 \
    | tee "$OUT/pytest.log" | grep -v "^\s*$" | tail -n 40
  status=${PIPESTATUS[0]}
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  if [ ! -f "$MODEL_DIR/gpt2-ts17-eager.onnx" ]; then
    python3 graphs/export.py --size base --family gpt2 --flavor ts17-eager --no-check --out "$MODEL_DIR" \
      > "$OUT/export.log" 2>&1 || { echo "run.sh: export failed"; tail -n 20 "$OUT/export.log"; exit 1; }
  fi
  if [ "${BENCH:-decode}" != more ]; then
    python3 benchmarks/gpu/bench_decode.py --model "$MODEL_DIR/gpt2-ts17-eager.onnx" --out "$OUT" ${BENCH_ARGS:-} \
      2>&1 | tee "$OUT/bench.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
  fi
  if [ "${BENCH:-decode}" != decode ]; then     # BENCH=more or BENCH=both: bench_more.py (medium/XL, memory, ...)
    python3 benchmarks/gpu/bench_more.py --model "$MODEL_DIR/gpt2-ts17-eager.onnx" --model-dir "$MODEL_DIR" \
      --out "$OUT" --budget "${MORE_BUDGET:-450}" ${MORE_ARGS:-} 2>&1 | tee "$OUT/bench_more.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
  fi
fi
echo "run.sh: pytest/bench status $status (logs in $OUT)"
exit $status
