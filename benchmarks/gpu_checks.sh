#!/usr/bin/env bash
# Every GPU check of a session in one command, so it fits one short lease of a GPU machine:
#   OUT=/some/folder bash benchmarks/gpu_checks.sh
# 1. the README's main job (python dcgan.py --epochs 5) on the GPU, its grid and metrics kept;
# 2. training speed at batch 64 and 128, default flags and --amp; 3. shapes rendering speed;
# 4. CUDA smoke runs: resume, generate, --compile; 5. the test suite on this machine's torch.
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

step "dcgan --epochs 5" 240 python3 dcgan.py --epochs 5 --out "$TMP/epochs5"
cp "$TMP/epochs5/samples/final.png" "$OUT/dcgan-epochs5.png" 2>/dev/null
cp "$TMP/epochs5/metrics.csv" "$OUT/dcgan-epochs5-metrics.csv" 2>/dev/null
cp "$TMP/epochs5/losses.png" "$OUT/dcgan-epochs5-losses.png" 2>/dev/null

step "speed default" 120 python3 benchmarks/speed.py --script dcgan --out "$OUT/speed-dcgan-cuda.json"
step "speed --amp" 120 python3 benchmarks/speed.py --script dcgan --extra=--amp --out "$OUT/speed-dcgan-cuda-amp.json"
step "shapes speed" 60 python3 benchmarks/shapes_speed.py --sizes 32 64 128 256 --out "$OUT/shapes-speed-cuda.json"

step "resume on cuda" 90 bash -c "python3 dcgan.py --max-steps 30 --dataset-size 2000 --image-size 32 --out $TMP/a \
  && python3 dcgan.py --resume $TMP/a --max-steps 60 && python3 dcgan.py --generate 16 --resume $TMP/a \
  && ls $TMP/a $TMP/a/generated-*"
step "compile" 150 python3 dcgan.py --max-steps 60 --dataset-size 8000 --image-size 32 --compile --log-every 20 --out "$TMP/c"
step "pytest" 120 python3 -m pytest -q -p no:cacheprovider
grep -E "^SPEED|== |passed|failed|error" "$OUT/log.txt" | tail -40
