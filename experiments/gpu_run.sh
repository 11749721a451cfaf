#!/usr/bin/env bash
# The GPU run: one prepared command (`quick`, at most 7 minutes on an H100/H200) and one optional follow-up
# (`more`, sized to the device time left). docs/GPU_RUN.md is the step-by-step guide; in short:
#
#   experiments/gpu_run.sh OUT quick                  # env, correctness subset, headline timings, plots
#   experiments/gpu_run.sh OUT more [PREV [SECONDS]]  # resume the headline from PREV/headline.csv, then the
#                                                     # variants, the hidden and batch grids, FlashRNN if carried
#   experiments/gpu_run.sh OUT all [SECONDS]          # an own GPU: quick, then more on OUT itself (SECONDS,
#                                                     # default 1500): everything, in one folder
#
# From a session with a GPU (the `run` tool), from the repository root here:
#   git rev-parse HEAD > REVISION        # the copy sent has no .git: REVISION names the measured commit
#   experiments/gpu_baseline.sh COMMIT   # optional: that commit's kernels/ and models/ in gpu_baseline/, timed
#                                        # beside this tree on the B = 16 and B = 1 cells (variant "baseline")
#   run(command="experiments/gpu_run.sh $OUT quick", timeout_s=480, carry=["REVISION", "gpu_baseline"])
#   -> look at the end of output_tail (correctness counts, the speedup table), then at files_at:
#      quick.log env.json correctness.csv failures.log headline.csv plots.tar.gz summary.md
#   optional follow-up, SECONDS = status's budget_left_s - 150 (a fresh machine's start) - 60, if >= 180:
#   mkdir -p gpu_prev && cp FILES_AT/* gpu_prev/   # gpu_prev/ is git-ignored
#   run(command="experiments/gpu_run.sh $OUT more gpu_prev SECONDS", timeout_s=SECONDS+60,
#       carry=["REVISION", "gpu_prev", "gpu_baseline"])
#   then give_back, and commit as docs/GPU_RUN.md says (results/, README table via experiments.report).
#
# Everything lands in OUT as it happens: the CSVs are appended and fsynced row by row, the log line by line,
# so a call cut short still returns what it measured. OUT receives at most 8 files. Each step has its own
# time limit and a failing step does not stop the next; the headline's budget is what is left of the
# stage's wall-time target (QUICK_S, default 400 s) after the earlier steps, minus the plots' share.
# The headline's GRU rows (nn.GRU against models.GRU, the same grid) come after all of its LSTM rows: they run
# when the budget leaves time (a `more` stage resumes them). The baseline commit's rows are the LSTM's only.
# The correctness subset runs with FUSEDRNN_AUTOTUNE=0 (first config per dtype group, no benchmarking);
# the timings run with autotuning as shipped.
#
# Without CUDA the same stage is the CPU dry run: tiny shapes in Triton's interpreter, timings of the CPU
# (rows say device=cpu; titles say "CPU, not a GPU benchmark"); it checks the script, not the kernels' speed.
#
# Run from the repository root; PYTHONPATH=. is set here. Nothing is pip-installed: wheels placed in .whl/
# (e.g. flashrnn and einops) are unpacked into a temporary folder and put on PYTHONPATH.
set -u -o pipefail
OUT=${1:?usage: experiments/gpu_run.sh OUT quick|more [PREV [SECONDS]] | OUT all [SECONDS]}
STAGE=${2:-quick}
PREV=${3:-}
mkdir -p "$OUT"
LOG="$OUT/$STAGE.log"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# the GPU image's interpreter with torch is python3 (a bare `python` may not exist there)
PY=${PYTHON:-python3}
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
say() { echo "[$(el)s] $*" | tee -a "$LOG"; }
step() {  # limit_seconds name command...: runs with a hard limit, output to the log and stdout
  local limit=$1 name=$2; shift 2
  say "== $name (limit ${limit}s)"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=$?
  say "== $name exit $rc$( [ $rc = 124 ] && echo ' (time limit)')"
  return 0
}

if compgen -G ".whl/*.whl" > /dev/null; then
  WHL=$(mktemp -d)
  for w in .whl/*.whl; do "$PY" -m zipfile -e "$w" "$WHL" && say "unpacked $w"; done
  export PYTHONPATH="$PYTHONPATH:$WHL"
fi

if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  GPU=1
else
  GPU=0
fi
say "stage $STAGE, OUT=$OUT, GPU=$GPU, revision $( [ -s REVISION ] && head -n1 REVISION || echo 'none (git)')"

plots() {  # csv...: one archive of every figure
  local dir="$OUT/plots"
  step 90 "plots" "$PY" -m experiments.plot "$@" --out "$dir"
  if [ -d "$dir" ]; then
    tar czf "$OUT/plots.tar.gz" -C "$OUT" plots >> "$LOG" 2>&1 && rm -rf "$dir"
  fi
}

summary() {  # headline csv
  "$PY" -m experiments.report "$1" > "$OUT/summary.md" 2>> "$LOG" || true
  if [ -s "$OUT/correctness.csv" ]; then
    "$PY" - "$OUT/correctness.csv" <<'EOF' >> "$OUT/summary.md"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
count = {s: sum(r["status"] == s for r in rows) for s in ("pass", "fail", "skip", "timeout")}
print("\ncorrectness: " + ", ".join(f"{v} {k}" for k, v in count.items()))
for r in rows:
    if r["status"] != "pass":
        print(f"- {r['status']}: {r['name']}: {r['error'][:160]}")
EOF
  fi
  tee -a "$LOG" < "$OUT/summary.md"
}

case "$STAGE" in
  quick)
    TOTAL=${QUICK_S:-400}
    if [ $GPU = 1 ]; then CHECK_S=150; ROW_S=30; PLOT_S=40
    else CHECK_S=240; ROW_S=10; PLOT_S=40; TOTAL=${QUICK_S:-600}; fi
    step 60 "environment" "$PY" -m experiments.gpu_env --out "$OUT/env.json"
    FUSEDRNN_AUTOTUNE=0 step $(( CHECK_S + 30 )) "correctness subset" \
      "$PY" -m experiments.gpu_check --out "$OUT/correctness.csv" --failures "$OUT/failures.log" --time-limit $CHECK_S
    BASE_S=0; [ -s gpu_baseline/models/__init__.py ] && BASE_S=$(( GPU == 1 ? 60 : 30 ))
    BUDGET=$(( TOTAL - $(el) - PLOT_S - ROW_S - BASE_S ))
    [ $BUDGET -lt 20 ] && BUDGET=20
    step $(( BUDGET + ROW_S + 15 )) "headline timings (budget ${BUDGET}s)" \
      "$PY" -m experiments.headline --out "$OUT/headline.csv" --budget $BUDGET --peaks-from "$OUT/env.json"
    if [ -s gpu_baseline/models/__init__.py ]; then  # the commit every change is held to, same cells
      step $(( BASE_S + ROW_S + 15 )) "headline, baseline $(head -c 12 gpu_baseline/REVISION 2>/dev/null) (budget ${BASE_S}s)" \
        "$PY" -m experiments.headline --out "$OUT/headline.csv" --budget $BASE_S --peaks-from "$OUT/env.json" \
        --baseline gpu_baseline --B 16,1 --dtypes bf16,fp16 --cells lstm
    fi
    plots "$OUT/headline.csv"
    summary "$OUT/headline.csv" ;;
  more)
    SECONDS_LEFT=${4:-300}
    if [ -n "$PREV" ] && [ -s "$PREV/headline.csv" ]; then
      [ "$PREV/headline.csv" -ef "$OUT/headline.csv" ] || cp "$PREV/headline.csv" "$OUT/headline.csv"
      say "resuming from $PREV/headline.csv ($(( $(wc -l < "$OUT/headline.csv") - 1 )) rows)"
    fi
    step 60 "environment" "$PY" -m experiments.gpu_env --out "$OUT/env.json"
    left=$(( SECONDS_LEFT - $(el) - 40 ))
    HB=$(( left * 30 / 100 )); SB=$(( left * 25 / 100 )); BB=$(( left * 15 / 100 )); NB=$(( left * 10 / 100 ))
    RB=$(( left * 5 / 100 ))
    [ $GPU = 0 ] && { HB=30; SB=20; BB=20; NB=20; RB=12; }
    step $(( HB + 45 )) "headline, every variant (budget ${HB}s)" \
      "$PY" -m experiments.headline --out "$OUT/headline.csv" --budget $HB --variants all --peaks-from "$OUT/env.json"
    if [ -s gpu_baseline/models/__init__.py ]; then
      step $(( HB / 3 + 45 )) "headline, baseline (budget $(( HB / 3 ))s)" \
        "$PY" -m experiments.headline --out "$OUT/headline.csv" --budget $(( HB / 3 )) --peaks-from "$OUT/env.json" \
        --baseline gpu_baseline --cells lstm
    fi
    # the multi-head cells at the issue's shape (B 16, T 1024, H 768: heads of 32 and 64, against the dense
    # cuDNN module of the same H; the sLSTM against its PyTorch loop and the dense cuDNN LSTM), into hidden.csv
    if [ $GPU = 1 ]; then NEW=(--B 16 --T 1024 --H 768 --dtypes bf16 --passes fwd,fwdbwd)
    else NEW=(--B 2 --T 3 --H 16 --dtypes fp32 --passes fwdbwd); fi
    for spec in "lstm 24" "slstm 24" "lstm 12" "slstm 12"; do
      read -r cell heads <<< "$spec"; [ $GPU = 0 ] && heads=$(( heads / 12 ))
      step $(( NB / 4 + 45 )) "$cell, $heads heads (budget $(( NB / 4 ))s)" "$PY" -m experiments.sweep --cell $cell \
        --heads $heads "${NEW[@]}" --out "$OUT/hidden.csv" --time-budget $(( NB / 4 ))
    done
    # episode resets and packed input (issue 23) at pytorch/rl's shape, B 128, T 128, H 256: padded, a 3% reset
    # mask (cuDNN runs the split segments), packed lengths; fusedrnn and cuDNN, into hidden.csv (keyed by resets_p
    # and packed)
    if [ $GPU = 1 ]; then RS=(--B 128 --T 128 --H 256 --dtypes bf16,fp32 --passes fwd,fwdbwd --backends cudnn,fusedrnn)
    else RS=(--B 3 --T 6 --H 16 --dtypes fp32 --passes fwdbwd); fi
    for extra in "" "--resets 0.03" "--packed"; do
      step $(( RB / 3 + 45 )) "resets / packed: ${extra:-padded} (budget $(( RB / 3 ))s)" "$PY" -m experiments.sweep \
        "${RS[@]}" $extra --out "$OUT/hidden.csv" --time-budget $(( RB / 3 ))
    done
    if [ $GPU = 1 ]; then
      SWEEP=(--dtypes bf16,fp16 --passes fwd,fwdbwd --backends cudnn,fusedrnn,flashrnn)
      step $(( SB + 45 )) "hidden grid (budget ${SB}s)" \
        "$PY" -m experiments.gpu_sweep --grid hidden --H 256,512,2048,128 \
        "${SWEEP[@]}" --out "$OUT/hidden.csv" --time-budget $SB
      step $(( BB + 45 )) "batch grid (budget ${BB}s)" "$PY" -m experiments.gpu_sweep --grid batch --B 4,32,128,2,8 \
        "${SWEEP[@]}" --out "$OUT/batch.csv" --time-budget $BB
    else
      step $(( SB + 60 )) "hidden grid, CPU smoke" "$PY" -m experiments.gpu_sweep --grid smoke --B 1 --H 16,32 \
        --T 4 --dtypes fp32 --out "$OUT/hidden.csv" --time-budget $SB
    fi
    plots $(ls "$OUT"/headline.csv "$OUT"/hidden.csv "$OUT"/batch.csv 2>/dev/null)
    summary "$OUT/headline.csv" ;;
  all)  # quick, then more resuming from OUT itself: every step of both stages, one folder (an own GPU)
    bash "$0" "$OUT" quick
    bash "$0" "$OUT" more "$OUT" "${3:-1500}" ;;
  *) echo "unknown stage $STAGE (quick, more, all)" >&2; exit 2 ;;
esac
say "done in $(el)s; files: $(ls "$OUT" | tr '\n' ' ')"
