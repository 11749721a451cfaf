"""The README's compile-check summary is generated from results/compile_table.csv (experiments.compile_report)."""
import csv
from pathlib import Path

from experiments import compile_report as cr

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("kernel", "arch", "dtype", "registers", "status", "mma_repeat", "triton", "commit", "date")


def _write(path, rows):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow(dict(zip(FIELDS, r)))


def test_summary_counts_failures_repeats_and_max_registers(tmp_path):
    meta = ("3.6.0", "abc1234", "2026-12-01 10:00 UTC")
    _write(tmp_path / "t.csv", [
        ("_k_fwd", "sm_90a", "bf16", "96", "OK", "1", *meta),
        ("_k_fwd", "sm_90a", "fp16", "128", "OK", "4", *meta),  # replicated MMA work
        ("_k_fwd", "sm_80", "fp32", "200", "SPILL", "1", *meta),  # failing; fp32 repeats do not count
        ("_k_bwd", "sm_90a", "fp32", "64", "OK", "2", *meta),
    ])
    text = cr.block(tmp_path / "t.csv")
    assert text.startswith(cr.BEGIN) and text.endswith(cr.END)
    assert "**4 compiles, 1 failing**" in text and "**1 fp16/bf16 compiles with `mma_repeat > 1`**" in text
    assert "commit abc1234" in text and "triton 3.6.0" in text
    assert "| `_k_fwd` | 128 | 200 |" in text and "| `_k_bwd` | 64 | - |" in text


def test_readme_block_is_the_generated_one():
    assert cr.main([str(ROOT / "results" / "compile_table.csv"), "--check", str(ROOT / "README.md")]) == 0


def test_usegate_count_is_generated_and_checked(tmp_path):
    """The use-gate section's compile count comes from the table (it was typed by hand: 420 for 412 rows);
    ``--check`` fails while it differs."""
    meta = ("3.6.0", "abc1234", "2026-12-01 10:00 UTC")
    _write(tmp_path / "t.csv", [
        ("_usegate_fwd_gates", "sm_90a", "bf16", "96", "OK", "1", *meta),
        ("_usegate_bwd_use", "sm_80", "fp32", "255", "SPILL", "1", *meta),
        ("_usegate_bwd_use", "sm_80", "fp64", "-1", "N/A", "0", *meta),
        ("_lstm_fwd_step", "sm_90a", "bf16", "64", "OK", "1", *meta),
    ])
    text = cr.usegate_block(tmp_path / "t.csv")
    assert text.startswith(cr.USEGATE_BEGIN) and text.endswith(cr.USEGATE_END)
    assert "its 2 kernels take **3 compiles, 2 failing**" in text and "commit abc1234" in text
    readme = tmp_path / "README.md"
    stale = text.replace("3 compiles", "420 compiles")
    readme.write_text(f"intro\n{cr.block(tmp_path / 't.csv')}\nuse gate:\n{stale}\nend\n")
    assert cr.main([str(tmp_path / "t.csv"), "--check", str(readme)]) == 1
    assert cr.main([str(tmp_path / "t.csv"), "--write", str(readme)]) == 0
    assert cr.main([str(tmp_path / "t.csv"), "--check", str(readme)]) == 0
    assert "420" not in readme.read_text() and readme.read_text().endswith("\nend\n")
