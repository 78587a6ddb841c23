#!/usr/bin/env bash
# Every GPU check of the attention kernels in one run, designed to finish in under 5 minutes on
# one H100: device facts, kernel correctness vs float32 XLA on the GPU (pallas and cuDNN, forward
# and dQ/dK/dV, packed and ragged cases), a block-size sweep at the headline shape, then the
# benchmark table (rows stop being started after BUDGET_S seconds; the rest are listed as not
# measured), then bench/decode.py (KV-cache generation, needs flax). Results go to $OUT (default
# ./gpu_results): attention.md (everything printed), attention.jsonl (one line per timing),
# decode.md, device.txt.
#
#   bench/gpu.sh                       # defaults below: about 3-4 minutes
#   QUICK=1 bench/gpu.sh               # about 1.5 minutes: 2 checks, seq 2048, 2 shapes, no sweep
#   SEQS=2048 SWEEP=0 BUDGET_S=60 bench/gpu.sh
#
# The attention part needs only jax[cuda] and numpy (elm_jax.kernels imports nothing else).
# Exit status 1 when a correctness check of our kernel fails.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$PWD/gpu_results}
if [ "${QUICK:-0}" = 1 ]; then
  : "${SEQS:=2048}" "${SHAPES:=64:12:3,128:12:3}" "${SWEEP:=0}" "${CHECK_CASES:=2}" "${BUDGET_S:=60}"
fi
BATCH=${BATCH:-8}
SEQS=${SEQS:-2048,4096}
SHAPES=${SHAPES:-64:12:3,64:20:5,128:12:3,128:24:6}
CHECK_CASES=${CHECK_CASES:-4}
IMPLS=${IMPLS:-pallas,cudnn,xla}
CAUSAL=${CAUSAL:-1}
BUDGET_S=${BUDGET_S:-150}
CHECK=${CHECK:-1}
SWEEP=${SWEEP:-1}
mkdir -p "$OUT"

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# XLA attention materialises [batch, heads, seq, seq] scores: give it most of the memory.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
PY=${PYTHON:-python3}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  $PY -c "import jax, sys; print('python', sys.version.split()[0], 'jax', jax.__version__, jax.devices())"
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

flags=(--batch "$BATCH" --seqs "$SEQS" --shapes "$SHAPES" --impls "$IMPLS" --causal "$CAUSAL"
       --budget_s "$BUDGET_S" --json "$OUT/attention.jsonl")
[ "$CHECK" = 1 ] && flags+=(--check --check_cases "$CHECK_CASES")
[ "$SWEEP" = 1 ] && flags+=(--sweep)
rm -f "$OUT/attention.jsonl"
start=$(date +%s)
$PY bench/attention.py "${flags[@]}" 2>&1 | tee "$OUT/attention.md"
status=${PIPESTATUS[0]}
echo "bench/gpu.sh: bench/attention.py exited $status after $(( $(date +%s) - start ))s" \
  | tee -a "$OUT/attention.md"

# Issue 7's decode benchmark (needs flax as well; DECODE=0 skips it).
if [ "${DECODE:-1}" = 1 ]; then
  if $PY -c "import flax.nnx" > "$OUT/decode.md" 2>&1; then
    $PY bench/decode.py 2>&1 | tee "$OUT/decode.md"
  else
    echo "bench/gpu.sh: decode benchmark not run: flax does not import here" | tee -a "$OUT/decode.md"
  fi
fi
exit "$status"
