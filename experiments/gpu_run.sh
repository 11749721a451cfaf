#!/usr/bin/env bash
# One GPU run: test suite, the `batch` and `hidden` grids (fp16, bf16; fwd, fwdbwd; reduced point sets),
# a torch.compile point, and the plots, in under ~9 minutes on an H100/H200.
#
#   experiments/gpu_run.sh OUTDIR
#
# Run from the repository root with PYTHONPATH=. (set here). Nothing is pip-installed: wheels placed in .whl/
# (e.g. flashrnn and einops) are unpacked into a temporary folder and put on PYTHONPATH.
# OUTDIR receives at most 8 files: run.log, pytest.log, batch.csv, hidden.csv, plots.tar.gz.
set -u
OUT=${1:?usage: experiments/gpu_run.sh OUTDIR}
mkdir -p "$OUT"
LOG="$OUT/run.log"
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

say "pytest (limit 210 s)"
timeout 210 python -m pytest -q -x tests > "$OUT/pytest.log" 2>&1
say "pytest exit $? (124 = time limit); tail:"; tail -n 5 "$OUT/pytest.log" >> "$LOG"

COMMON=(--dtypes fp16,bf16 --passes fwd,fwdbwd --backends cudnn,fusedrnn,torch_loop,flashrnn --rep-ms 60)
say "sweep batch"
timeout 140 python -m experiments.sweep --grid batch --B 1,4,16,64,256 "${COMMON[@]}" \
  --out "$OUT/batch.csv" --time-budget 115 >> "$LOG" 2>&1
say "sweep batch exit $?"
say "sweep hidden"
timeout 140 python -m experiments.sweep --grid hidden --H 128,256,512,1024,2048 "${COMMON[@]}" \
  --out "$OUT/hidden.csv" --time-budget 115 >> "$LOG" 2>&1
say "sweep hidden exit $?"
say "torch.compile point (B=16)"
timeout 60 python -m experiments.sweep --grid batch --B 16 --dtypes fp16 --passes fwd,fwdbwd \
  --backends cudnn,torch_compile --out "$OUT/batch.csv" --time-budget 45 >> "$LOG" 2>&1
say "torch.compile exit $?"

say "plots"
python -m experiments.plot "$OUT/batch.csv" "$OUT/hidden.csv" --out "$OUT/plots" >> "$LOG" 2>&1
say "plot exit $?"
tar czf "$OUT/plots.tar.gz" -C "$OUT" plots >> "$LOG" 2>&1 && rm -rf "$OUT/plots"
say "done; files: $(ls "$OUT" | tr '\n' ' ')"
