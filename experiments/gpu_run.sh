#!/usr/bin/env bash
# The GPU run, in stages that each fit one device call (< 9 minutes on an H100/H200):
#
#   experiments/gpu_run.sh OUTDIR tests    # GPU test suite (the static compile check is left to CI)
#   experiments/gpu_run.sh OUTDIR batch    # `batch` grid, fp16 + bf16, fwd + fwdbwd, then its plots
#   experiments/gpu_run.sh OUTDIR hidden   # `hidden` grid, likewise, plus one torch.compile point
#   experiments/gpu_run.sh OUTDIR all      # the three in a row (about 20 minutes)
#
# Run from the repository root; PYTHONPATH=. is set here. Nothing is pip-installed: wheels placed in .whl/
# (e.g. flashrnn and einops) are unpacked into a temporary folder and put on PYTHONPATH.
# OUTDIR receives at most 8 files per stage: <stage>.log, pytest.log, <grid>.csv, <grid>_plots.tar.gz.
# The sweeps stop starting rows at their time budget; rerunning a stage with the CSV in place resumes it.
set -u
OUT=${1:?usage: experiments/gpu_run.sh OUTDIR [tests|batch|hidden|all]}
STAGE=${2:-all}
mkdir -p "$OUT"
LOG="$OUT/$STAGE.log"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }

if compgen -G ".whl/*.whl" > /dev/null; then
  WHL=$(mktemp -d)
  for w in .whl/*.whl; do python -m zipfile -e "$w" "$WHL" && say "unpacked $w"; done
  export PYTHONPATH="$PYTHONPATH:$WHL"
fi

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)"
  git rev-parse HEAD 2>/dev/null || true; } >> "$LOG" 2>&1

COMMON=(--dtypes fp16,bf16 --passes fwd,fwdbwd --backends cudnn,fusedrnn,torch_loop,flashrnn --rep-ms 60)

stage_tests() {
  say "pytest (limit 420 s; FUSEDRNN_AUTOTUNE=0: first config per dtype group; compile check deselected: it needs no GPU and runs in CI)"
  FUSEDRNN_AUTOTUNE=0 timeout 420 python -m pytest -q --maxfail=20 --deselect tests/test_compile_check.py \
    -p no:cacheprovider tests > "$OUT/pytest.log" 2>&1
  say "pytest exit $? (124 = time limit); tail:"; tail -n 8 "$OUT/pytest.log" >> "$LOG"
}

sweep_and_plot() {  # grid, budget seconds, extra args...
  local grid=$1 budget=$2; shift 2
  say "sweep $grid (budget ${budget}s)"
  timeout $(( budget + 60 )) python -m experiments.sweep --grid "$grid" "${COMMON[@]}" "$@" \
    --out "$OUT/$grid.csv" --time-budget "$budget" >> "$LOG" 2>&1
  say "sweep $grid exit $?"
}

plots() {  # grid
  local grid=$1
  say "plots $grid"
  python -m experiments.plot "$OUT/$grid.csv" --out "$OUT/${grid}_plots" >> "$LOG" 2>&1
  say "plot exit $?"
  tar czf "$OUT/${grid}_plots.tar.gz" -C "$OUT" "${grid}_plots" >> "$LOG" 2>&1 && rm -rf "$OUT/${grid}_plots"
}

case "$STAGE" in
  tests) stage_tests ;;
  batch) sweep_and_plot batch 420 --B 1,4,16,64,256; plots batch ;;
  hidden)
    sweep_and_plot hidden 360 --H 128,256,512,1024,2048
    say "torch.compile point (B=16, H=1024, fp16)"
    timeout 90 python -m experiments.sweep --grid batch --B 16 --dtypes fp16 --passes fwd,fwdbwd \
      --backends cudnn,torch_compile --out "$OUT/hidden.csv" --time-budget 60 >> "$LOG" 2>&1
    say "torch.compile exit $?"
    plots hidden ;;
  all) "$0" "$OUT" tests; "$0" "$OUT" batch; "$0" "$OUT" hidden ;;
  *) echo "unknown stage $STAGE (tests, batch, hidden, all)" >&2; exit 2 ;;
esac
say "done; files: $(ls "$OUT" | tr '\n' ' ')"
