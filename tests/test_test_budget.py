"""The README's test count and time come from a measured run (experiments.test_budget), never typed by hand."""
import csv
from pathlib import Path

import pytest

from experiments import test_budget as tb
from experiments.report import ReportError

ROOT = Path(__file__).resolve().parent.parent


def test_parse_pytest_summary():
    out = ("....s.\n= 25 slowest durations =\n12.0s call tests/x.py::t\n"
           "543 passed, 23 skipped, 3 warnings in 402.12s (0:06:42)\n")
    assert tb.parse_summary(out) == dict(passed=543, skipped=23, failed=0, errors=0)
    assert tb.parse_summary("F.\n1 failed, 2 passed, 1 error in 3.01s\n") == dict(passed=2, skipped=0, failed=1,
                                                                                    errors=1)
    assert tb.parse_summary("==== 2 errors in 0.50s ====") == dict(passed=0, skipped=0, failed=0, errors=2)
    with pytest.raises(ReportError):
        tb.parse_summary("3 passed so far\n")  # no "in S s": not the summary line


def test_statement_of_the_last_row_and_refusal_of_a_failed_run(tmp_path):
    row = dict(date="2026-12-07 15:00 UTC", commit="abc1234", command="python -m pytest -q", cores=2,
               load_1min="0.10", triton_cache="cold", passed=540, skipped=20, failed=0, errors=0, minutes="6.04",
               exit_code=0, source="python -m experiments.test_budget run")
    path = tmp_path / "budget.csv"
    tb.append_row(path, dict(row, commit="old0000", passed=1))
    tb.append_row(path, row)
    with open(path, newline="") as f:
        assert list(csv.DictReader(f).fieldnames) == list(tb.COLUMNS)
    text = tb.block(path)
    assert text.startswith(tb.BEGIN) and text.endswith(tb.END)
    assert "commit abc1234" in text and "**560 tests, 20 of them skipped without a GPU, 6.0 minutes** on 2 CPU " \
        "cores, triton's compile cache cold" in text
    for bad in (dict(failed=1), dict(errors=2), dict(exit_code=1)):
        with pytest.raises(ReportError):
            tb.statement(dict(row, **bad))


def test_run_measures_the_command(tmp_path, monkeypatch):
    """``measure`` runs the README's pytest command from the repository root (here a stand-in root with four
    quick tests, on 1 core, with a fresh compile cache) and reads its counts; a failing run is no statement."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import os, pytest\n"
        "def test_pinned_fresh_cache():\n"
        "    assert len(os.sched_getaffinity(0)) == 1 and 'triton-cache-' in os.environ['TRITON_CACHE_DIR']\n"
        "def test_b():\n    pass\n"
        "@pytest.mark.skip(reason='stand-in for a GPU-only test')\ndef test_c():\n    pass\n"
        "def test_d():\n    assert False\n")
    monkeypatch.setattr(tb, "ROOT", tmp_path)
    row = tb.measure(cores=1, extra=("-p", "no:cacheprovider"))
    assert (row["passed"], row["skipped"], row["failed"], row["errors"], row["exit_code"]) == (2, 1, 1, 0, 1)
    assert row["cores"] == 1 and row["triton_cache"] == "cold"
    assert row["command"] == "python -m pytest -q -p no:cacheprovider"
    assert 0 < float(row["minutes"]) < 5 and row["commit"] and row["date"].endswith("UTC")
    with pytest.raises(ReportError, match="1 failed"):
        tb.statement(row)
    monkeypatch.setattr(tb, "ROOT", tmp_path / "absent")
    with pytest.raises(ReportError, match="no tests/"):
        tb.measure()


def test_readme_statement_is_the_generated_one():
    assert tb.main([str(ROOT / "results" / "test_budget.csv"), "--check", str(ROOT / "README.md")]) == 0
