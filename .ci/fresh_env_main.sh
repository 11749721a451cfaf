#!/usr/bin/env bash
# CI: the README's main command on a fresh machine. A brand-new virtual environment (no site packages), the
# install exactly as the README says (no test extra), then the sweep with --plot, from the root of a fresh
# clone. Fails on a non-zero exit, on a CSV without rows, and on any row with an error.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
t0=$(date +%s)
python3 -m venv "$tmp/venv"
# shellcheck disable=SC1091
. "$tmp/venv/bin/activate"
# a clone of the committed tree, so that the sweep's resumable CSV (scratch/, relative to the repository root
# where the README runs it) starts empty and nothing is written into the working copy
git clone -q "$repo" "$tmp/repo"
cd "$tmp/repo"
# the README's main command, from the repository root, in two halves to time them
pip install -q torch==2.13.0 triton==3.6.0 -e .
t1=$(date +%s)
python -m experiments.sweep --plot
t2=$(date +%s)
python - "$tmp/repo/scratch/smoke.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
bad = [r for r in rows if r.get("error")]
for r in bad:
    print(f"error row: {r['backend']}/{r['strategy']} B={r['B']} {r['dtype']} {r['pass']}: {r['error']}")
print(f"{len(rows)} rows, {len(bad)} with errors")
sys.exit(1 if bad or not rows else 0)
PY
find "$tmp/repo/scratch" -name "*.png" | grep -q . || { echo "no plots written"; exit 1; }
echo "fresh-env main command: install $((t1 - t0)) s, sweep + plots $((t2 - t1)) s"
