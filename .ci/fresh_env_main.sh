#!/usr/bin/env bash
# CI: the README's main command on a fresh machine. A brand-new virtual environment (no site packages), the
# install exactly as the README says (no test extra), then the sweep with --plot in a temporary working
# directory. Fails on a non-zero exit, on a CSV without rows, and on any row with an error.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
t0=$(date +%s)
python3 -m venv "$tmp/venv"
# shellcheck disable=SC1091
. "$tmp/venv/bin/activate"
cd "$repo"
# the README's main command, in two halves so that the CSV lands in the temporary directory
pip install -q torch==2.13.0 triton==3.6.0 -e .
t1=$(date +%s)
cd "$tmp"
python -m experiments.sweep --plot
t2=$(date +%s)
python - "$tmp/scratch/smoke.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
bad = [r for r in rows if r.get("error")]
for r in bad:
    print(f"error row: {r['backend']}/{r['strategy']} B={r['B']} {r['dtype']} {r['pass']}: {r['error']}")
print(f"{len(rows)} rows, {len(bad)} with errors")
sys.exit(1 if bad or not rows else 0)
PY
find "$tmp/scratch" -name "*.png" | grep -q . || { echo "no plots written"; exit 1; }
echo "fresh-env main command: install $((t1 - t0)) s, sweep + plots $((t2 - t1)) s"
