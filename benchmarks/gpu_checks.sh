#!/usr/bin/env bash
# Every GPU check of a session in one command, so it fits one short lease of a GPU machine:
#   OUT=/some/folder bash benchmarks/gpu_checks.sh
# For each script with default flags: the README's `--epochs 5` run alone on the card (wall
# time, final grid), then its training speed (benchmarks/speed.py); last, the test suite on
# that machine's torch. At most 8 files land in $OUT (the device tool brings back no more).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
TMP=$(mktemp -d)
log() { echo "== $*" | tee -a "$OUT/log.txt"; }
step() { local name=$1 limit=$2; shift 2; log "$name"; local t0=$SECONDS
  timeout "$limit" "$@" >>"$OUT/log.txt" 2>&1; local rc=$?
  log "$name: exit $rc in $((SECONDS - t0)) s"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$OUT/log.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" >>"$OUT/log.txt"

for script in dcgan wgan relativistic_gan; do
  step "$script --epochs 5" 240 python3 $script.py --epochs 5 --out "$TMP/$script"
  cp "$TMP/$script/samples/final.png" "$OUT/$script.png" 2>/dev/null
  tail -3 "$TMP/$script/metrics.csv" >>"$OUT/log.txt" 2>/dev/null
done
cp "$TMP/wgan/losses.png" "$OUT/wgan-curves.png" 2>/dev/null

step "speed dcgan" 120 python3 benchmarks/speed.py --script dcgan --out "$OUT/speed-dcgan-cuda.json"
step "speed wgan" 120 python3 benchmarks/speed.py --script wgan --batch-sizes 64 \
  --extra="--critic-schedule constant" --out "$OUT/speed-wgan-cuda.json"
step "speed relativistic_gan" 120 python3 benchmarks/speed.py --script relativistic_gan --batch-sizes 32 64 \
  --out "$OUT/speed-relativistic_gan-cuda.json"
step "pytest" 150 python3 -m pytest -q -p no:cacheprovider
grep -E "^SPEED|== |passed|failed" "$OUT/log.txt" | tail -30
