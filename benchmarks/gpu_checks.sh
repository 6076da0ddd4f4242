#!/usr/bin/env bash
# Every script's quick run on one GPU, then the test suite, in one command of about ten minutes.
# Two more such commands: benchmarks/speed_gpu.sh (the CUDA tests of --fast, then speed.py for all
# nine image scripts) and benchmarks/quality_gpu.sh GROUP (the quality benchmark).
#
#   OUT=/some/folder LIMIT=420 [BUDGET=570] [PYTEST=0] bash benchmarks/gpu_checks.sh [script ...]  (default: all ten)
#   (the runs are cut at LIMIT seconds; the test suite then gets what BUDGET, the whole command, leaves)
#
# Every named script's quick run (`--epochs 5`, cyclegan's 5-epoch schedule, seqgan's default
# schedule) starts at once, all sharing the card, each cut at LIMIT seconds: wall times are
# therefore upper bounds on a run alone, and a cut run still leaves its per-epoch summary lines,
# metrics.csv and its latest epoch grid. Then the test suite on that machine's torch. It writes:
#   $OUT/log.txt   per script: exit code, wall time, its epoch summary lines
#   $OUT/runs.tgz  per script: metrics.csv, losses.png, the last sample grid, config.json
# seqgan runs on the paper's oracle when .oracle/oracle_params.npz exists in the repository
# (else on a fresh oracle drawn from the seed); the suite's oracle test reads the same file.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-checks}; LIMIT=${LIMIT:-420}
mkdir -p "$OUT"
T=$(mktemp -d)
scripts=("$@"); [ ${#scripts[@]} -gt 0 ] || scripts=(dcgan wgan relativistic_gan infogan began vaegan sagan progan cyclegan seqgan)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  echo "LIMIT=$LIMIT s per run; all runs share the card"; } >"$OUT/log.txt" 2>&1

quick_args() {  # the quick run of each script
  case $1 in
    cyclegan) echo "--n-epochs 3 --n-epochs-decay 2" ;;
    seqgan) [ -f .oracle/oracle_params.npz ] && echo "--oracle .oracle/oracle_params.npz" ;;
    *) echo "--epochs 5" ;;
  esac
}
for s in "${scripts[@]}"; do
  ( t0=$SECONDS; timeout "$LIMIT" python3 "$s.py" $(quick_args "$s") --out "$T/$s" >"$T/$s.log" 2>&1
    rc=$?; echo "== $s $(quick_args "$s"): exit $rc in $((SECONDS - t0)) s" >>"$T/$s.log" ) &
done
wait
for s in "${scripts[@]}"; do
  grep -E "^(epoch|step|done|==)|rror|paired" "$T/$s.log" | tail -25 >>"$OUT/log.txt"
  last=$(ls -t "$T/$s/samples/"*.png 2>/dev/null | head -1)
  mkdir -p "$T/back/$s"
  for f in metrics.csv losses.png config.json; do cp "$T/$s/$f" "$T/back/$s/" 2>/dev/null; done
  [ -n "$last" ] && cp "$last" "$T/back/$s/"
done
tar czf "$OUT/runs.tgz" -C "$T/back" .
# the test suite gets at most 200 s, and never more than BUDGET (default 570 s) leaves
left=$(( ${BUDGET:-570} - SECONDS - 10 )); [ "$left" -gt 200 ] && left=200
if [ "${PYTEST:-1}" = 1 ] && [ "$left" -gt 30 ]; then t0=$SECONDS
SEQGAN_ORACLE=$PWD/.oracle/oracle_params.npz timeout "$left" python3 -m pytest -q -p no:cacheprovider 2>&1 | tail -3 >>"$OUT/log.txt"
echo "== pytest in $((SECONDS - t0)) s (limit $left s)" >>"$OUT/log.txt"; fi
grep -E "^== " "$OUT/log.txt"
