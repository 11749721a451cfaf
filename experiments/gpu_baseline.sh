#!/usr/bin/env bash
# Put COMMIT's kernels/ and models/ into gpu_baseline/ (git-ignored), with its hash in gpu_baseline/REVISION, so
# that `experiments/gpu_run.sh` times that commit beside the working tree in the same GPU call (headline rows
# "<strategy>@baseline"). Carry it: run(..., carry=["REVISION", "gpu_baseline"]).
#   experiments/gpu_baseline.sh b7fdde2
set -euo pipefail
COMMIT=${1:?usage: experiments/gpu_baseline.sh COMMIT}
cd "$(dirname "$0")/.."
rm -rf gpu_baseline && mkdir gpu_baseline
git archive "$COMMIT" kernels models | tar -x -C gpu_baseline
git rev-parse "$COMMIT" > gpu_baseline/REVISION
echo "gpu_baseline/: $(cat gpu_baseline/REVISION) ($(du -sh gpu_baseline | cut -f1))"
