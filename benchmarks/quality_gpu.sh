#!/usr/bin/env bash
# The quality benchmark (benchmarks/quality.py) for a group of scripts on one GPU, in one command
# of about ten minutes:
#
#   OUT=/some/folder LIMIT=540 [SEEDS=1] [JOBS=8] bash benchmarks/quality_gpu.sh GROUP | SCRIPT ...
#
# Groups (every run of a group trains at once, all sharing the card, in JOBS worker processes;
# LIMIT cuts the whole command, in seconds):
#   g1: dcgan wgan infogan relativistic_gan   (7 runs: RGAN's main run and SGAN/RaSGAN/RaLSGAN on 2,000 images)
#   g2: vaegan sagan                          (4 runs: VAE-GAN and the plain VAE; SAGAN with and without attention)
#   g3: progan                                (2 runs: grown and fixed size)
#   g4: cyclegan began                        (3 runs: CycleGAN with and without the cycle loss; BEGAN)
#   g5: seqgan                                (4 runs with SEEDS=2: SeqGAN and MLE on the paper's oracle)
# Budgets are quality.py's defaults (each script's quick run); a script's JSON is written as soon
# as its runs are scored, so a command cut by LIMIT still returns the scripts that finished.
# It writes:
#   $OUT/log.txt        the device, versions, quality.py's output and each run's last lines
#   $OUT/quality.tgz    quality-NAME.json and quality-NAME.png: untar into benchmarks/results/
#   $OUT/classifier-*.pt the feature networks used (benchmarks/.cache/): keep them in
#                        benchmarks/.cache/ on the GPU machine, so that every group is scored
#                        with the same feature network
# g5 needs the paper's oracle: ORACLE=FILE (the official save/target_params_py3.pkl, or its .npz form).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/quality-gpu}; LIMIT=${LIMIT:-540}; SEEDS=${SEEDS:-1}; JOBS=${JOBS:-8}
mkdir -p "$OUT"
T=$(mktemp -d)
scripts=()
for a in "$@"; do
  case $a in
    g1) scripts+=(dcgan wgan infogan relativistic_gan) ;;
    g2) scripts+=(vaegan sagan) ;;
    g3) scripts+=(progan) ;;
    g4) scripts+=(cyclegan began) ;;
    g5) scripts+=(seqgan); SEEDS=$(( SEEDS > 2 ? SEEDS : 2 )) ;;
    *) scripts+=("$a") ;;
  esac
done
[ ${#scripts[@]} -gt 0 ] || { echo "usage: OUT=DIR bash benchmarks/quality_gpu.sh g1|g2|g3|g4|g5|SCRIPT ..." >&2; exit 2; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__)"
  ls benchmarks/.cache 2>/dev/null | sed 's/^/cached: /'
  echo "scripts: ${scripts[*]}; SEEDS=$SEEDS JOBS=$JOBS LIMIT=$LIMIT s"; } >"$OUT/log.txt" 2>&1
t0=$SECONDS
timeout "$LIMIT" python3 benchmarks/quality.py --script "${scripts[@]}" --seeds "$SEEDS" --jobs "$JOBS" \
  --results-dir "$T/results" --work "$T/work" ${ORACLE:+--oracle "$ORACLE"} >>"$OUT/log.txt" 2>&1
echo "== quality.py exit $? in $((SECONDS - t0)) s" >>"$OUT/log.txt"
for f in "$T"/work/*/*.log; do  # the last lines of every run (epoch summaries, errors)
  [ -f "$f" ] && { echo "-- $f"; grep -E "^(epoch|step|done|phase)|rror" "$f" | tail -6; } >>"$OUT/log.txt"
done
mkdir -p "$T/results"
tar czf "$OUT/quality.tgz" -C "$T/results" .
cp benchmarks/.cache/classifier-*.pt "$OUT/" 2>/dev/null
grep -E "^(==|trained|[a-z_]+: wrote)" "$OUT/log.txt"
