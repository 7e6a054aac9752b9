#!/usr/bin/env bash
# A/B of decode-step variants (environment switches of backends/cuda.py) in one device call, interleaved so that
# drift of the card shows up as a difference between the rounds of one variant. Run after run.sh has installed
# the wheels and exported the model (or with SKIP_TESTS=1 SKIP_BENCH=1 bash benchmarks/gpu/run.sh first):
#     ROUNDS=2 CONFIGS=1x64,32x512 bash benchmarks/gpu/ab_decode.sh "NAME=ENV ENV" "NAME2=ENV ..."
# e.g. "old=EETJIT_ATTENTION_VEC=0 EETJIT_GEMV_MAX_M=0" "vec=EETJIT_GEMV_MAX_M=0" "gemv=EETJIT_GEMV_MAX_M=4".
# Prints one line per run and variant: the eetjit ms/step and graph replay per configuration.
set -uo pipefail
OUT=${OUT:-/tmp/eetjit-gpu}
MODEL_DIR=${MODEL_DIR:-/tmp/eetjit-models}
export PYTHONPATH=/tmp/site:$PWD NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0 PYTHONUNBUFFERED=1
export EETJIT_CACHE_DIR=${EETJIT_CACHE_DIR:-/tmp/eetjit-cache}
mkdir -p "$OUT/ab"
for round in $(seq "${ROUNDS:-2}"); do
  for variant in "$@"; do
    name=${variant%%=*}
    log="$OUT/ab/$name-$round.log"
    env ${variant#*=} timeout "${AB_TIMEOUT:-120}" python3 benchmarks/gpu/bench_decode.py \
      --model "$MODEL_DIR/gpt2-ts17-eager.onnx" --out "$OUT/ab" --configs "${CONFIGS:-1x64,32x512}" \
      --new "${NEW:-64}" --repeats "${REPEATS:-3}" --peers none ${AB_ARGS:-} > "$log" 2>&1
    echo "round $round $name: $(grep -E '^\[[0-9]+x[0-9]+\] eetjit [0-9.]+ ms/step' "$log" | sed -E 's/ \(.*replay ([0-9.]+) ms.*/ (replay \1)/' | tr '\n' ' ') $(grep -m1 -E 'Error|error' "$log")"
  done
done
