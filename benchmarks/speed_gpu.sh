#!/usr/bin/env bash
# Training speed on one GPU in one command of about ten minutes: the CUDA tests of --fast, then
# benchmarks/speed.py for the nine image scripts.
#
#   OUT=/some/folder [BUDGET=570] bash benchmarks/speed_gpu.sh [script ...]   (default: all nine)
#
# BUDGET is the whole command's wall time in seconds: the CUDA tests get at most 150 s,
# speed.py what is left but 20 s for packing the results.
# 1. tests/test_fast.py on the GPU: the capture itself (a captured step against eager steps, and
#    every script trained and resumed with --fast); a failure here means --fast is broken on CUDA.
# 2. benchmarks/speed.py: plain loop, default flags, --fast and --fast --amp for each named script
#    (the three with the 3.5x target first), --steps 100; every JSON is written as its script
#    finishes, so a run cut by the budget still returns the finished ones.
# It writes $OUT/log.txt (device, tests, one SPEED line per script, errors) and $OUT/speed.tgz
# (speed-NAME.json: untar into benchmarks/results/, then
# `python benchmarks/speed.py --table benchmarks/results/speed-*.json` for the table).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/speed-gpu}; BUDGET=${BUDGET:-570}
mkdir -p "$OUT"
T=$(mktemp -d)
scripts=("$@"); [ ${#scripts[@]} -gt 0 ] || scripts=(dcgan wgan relativistic_gan infogan began vaegan sagan progan cyclegan)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__)"; } >"$OUT/log.txt" 2>&1
t0=$SECONDS
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_fast.py 2>&1 | tail -25 >>"$OUT/log.txt"
echo "== test_fast in $((SECONDS - t0)) s" >>"$OUT/log.txt"
t0=$SECONDS; left=$(( BUDGET - SECONDS - 20 ))
timeout "$left" python3 benchmarks/speed.py --script "${scripts[@]}" --steps 100 --out-dir "$T" \
    --fast-flags=--fast --fast-flags="--fast --amp" >"$T/speed.log" 2>&1
echo "== speed.py exit $? in $((SECONDS - t0)) s (limit ${left} s)" >>"$T/speed.log"
grep -E "SPEED|images/s|rror|==" "$T/speed.log" | tail -60 >>"$OUT/log.txt"
tar czf "$OUT/speed.tgz" -C "$T" .
grep -E "SPEED|^== |passed|failed" "$OUT/log.txt"
