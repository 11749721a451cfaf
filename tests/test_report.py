"""experiments/report.py: the README's headline table is generated from a headline CSV. The CSVs here are
fixtures written by the test with round made-up times (no GPU numbers), never committed."""
from __future__ import annotations

from pathlib import Path

from experiments import report, tasks_report
from experiments.results import ADDED, append_row

ROOT = Path(__file__).resolve().parent.parent


def _row(B, H, dtype, pass_, backend, strategy, ms, **extra):
    row = dict(device="cuda", gpu="TESTGPU", B=B, T=1024, H=H, I=H, layers=1, directions=1, dtype=dtype,
               backend=backend, strategy=strategy, ms_p50=ms, error="", commit="abc123def4567", torch="2.11.0",
               triton="3.6.0", cuda="13.0", cudnn=91000, date="2026-12-01T00:00:00Z", cudnn_algo="standard",
               max_rel_err=0.001)
    row["pass"] = pass_
    row.update(extra)
    return row


def _fixture(path: Path, cudnn_ms=2.0):
    for B in (1, 16):
        for dt in ("bf16", "fp16"):
            for ps in ("fwd", "fwdbwd"):
                append_row(path, _row(B, 1024, dt, ps, "cudnn", "", cudnn_ms, cudnn_algo_seen="standard"))
                append_row(path, _row(B, 1024, dt, ps, "fusedrnn", "per_step", 1.0))
                append_row(path, _row(B, 1024, dt, ps, "fusedrnn", "persistent", 0.5))
    append_row(path, _row(16, 768, "bf16", "fwd", "cudnn", "", 3.0))
    append_row(path, _row(16, 768, "bf16", "fwd", "fusedrnn", "per_step", None, error="RuntimeError: boom"))
    append_row(path, _row(16, 768, "bf16", "fwd", "fusedrnn", "persistent", 4.0, max_rel_err=0.5))


def test_table_gives_every_cell_its_speedups(tmp_path):
    csv = tmp_path / "headline.csv"
    _fixture(csv)
    md = report.block(csv)
    assert md.startswith(report.BEGIN) and md.endswith(report.END)
    lines = md.splitlines()
    header = "| B | H | bf16 fwd | bf16 fwd+bwd | fp16 fwd | fp16 fwd+bwd |"
    assert lines.count(header) == 2
    assert "| 1 | 1024 | " + " | ".join(["2× per_step · **4× persistent**"] * 4) + " |" in lines
    # B=16 H=768: an error row, and a row whose output failed the comparison with cuDNN: never a speedup
    assert "| 16 | 768 | err per_step · wrong persistent | – | – | – |" in lines
    assert "| 16 | 1024 | 2 (standard / standard) | 2 (standard / standard) |" in md
    assert "wrong: the first call" in md and "0.75" not in md
    assert "TESTGPU, commit abc123def456, torch 2.11.0, triton 3.6.0, CUDA 13.0, cuDNN 91000, 2026-12-01" in md


def test_gru_rows_get_their_own_tables_after_the_lstm(tmp_path):
    csv = tmp_path / "headline.csv"
    _fixture(csv)
    lstm_only = report.block(csv)
    for dt in ("bf16", "fp16"):
        for ps in ("fwd", "fwdbwd"):
            append_row(csv, _row(16, 1024, dt, ps, "cudnn", "", 3.0, cell="gru"))
            append_row(csv, _row(16, 1024, dt, ps, "fusedrnn", "per_step", 1.5, cell="gru"))
    md = report.block(csv)
    assert md.startswith(lstm_only[: -len(report.END)].rstrip())  # the LSTM's tables as they were, first
    gru = md[len(lstm_only) - len(report.END):]
    assert "**fusedrnn GRU speedup over cuDNN (nn.GRU)**" in gru and "**fusedrnn GRU" not in lstm_only
    assert "| 16 | 1024 | " + " | ".join(["**2× per_step**"] * 4) + " |" in gru.splitlines()
    assert "| 1 | 1024 |" not in gru  # only the GRU's own rows
    assert "cudnn nn.GRU median ms" in gru and "| 16 | 1024 | 3 (standard) |" in gru
    # a CSV without the cell column (before it existed): LSTM rows
    import csv as _csv

    old = tmp_path / "old.csv"
    with csv.open(newline="") as f:
        rows = [r for r in _csv.DictReader(f) if r["cell"] == "lstm"]
    with old.open("w", newline="") as f:
        w = _csv.DictWriter(f, fieldnames=[c for c in rows[0] if c not in ADDED], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    assert report.block(old) == lstm_only


def test_write_then_check_and_a_stale_block_fails(tmp_path, capsys):
    csv, readme = tmp_path / "headline.csv", tmp_path / "README.md"
    _fixture(csv)
    readme.write_text(f"# x\n\nbefore\n\n{report.block(None)}\n\nafter\n")
    assert report.main([str(csv), "--check", str(readme)]) == 1  # still the placeholder
    assert report.main([str(csv), "--write", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "**4× persistent**" in text
    assert report.main([str(csv), "--check", str(readme)]) == 0
    append_row(csv, _row(1, 1024, "bf16", "fwd", "fusedrnn", "persistent", 0.25))  # a rerun: the last row wins
    assert report.main([str(csv), "--check", str(readme)]) == 1
    assert "8× persistent" in report.block(csv)


def test_cpu_rows_never_reach_the_readme(tmp_path):
    csv, readme = tmp_path / "headline.csv", tmp_path / "README.md"
    append_row(csv, _row(1, 16, "bf16", "fwd", "torch_cpu", "", 2.0, device="cpu", gpu="cpu (x86_64)"))
    append_row(csv, _row(1, 16, "bf16", "fwd", "fusedrnn", "per_step", 4.0, device="cpu", gpu="cpu (x86_64)"))
    readme.write_text(report.block(None))
    assert report.main([str(csv), "--write", str(readme)]) == 2
    assert "CPU, not a GPU benchmark" in report.block(csv)


def test_the_readme_block_is_the_generated_one():
    """README.md's headline block is what `python -m experiments.report results/headline.csv` generates (the
    placeholder while results/headline.csv does not exist)."""
    assert report.main([str(ROOT / "results" / "headline.csv"), "--check", str(ROOT / "README.md")]) == 0


# ---------------------------------------------------------------------------------------------- tasks summary
def test_the_readme_tasks_summary_is_the_generated_one():
    """README.md's LSTM-vs-RNN figures are what `python -m experiments.tasks_report results/tasks_smoke`
    generates from the committed CSVs."""
    folder = ROOT / "results" / "tasks_smoke"
    assert tasks_report.main([str(folder), "--check", str(ROOT / "README.md")]) == 0


def _study_csv(path: Path, text: str) -> None:
    """A study CSV (``experiments.tasks``' columns, those not in ``text`` empty) holding the rows of ``text``."""
    import csv
    import io

    from experiments.results import append_rows
    from experiments.tasks import CURVES, GRADS

    append_rows(path, list(csv.DictReader(io.StringIO(text))), GRADS if path.name == "gradnorm.csv" else CURVES)


def test_tasks_summary_reads_the_last_step_and_the_gradient_ratio(tmp_path):
    _study_csv(tmp_path / "curves.csv", 
        "model,task,T,seed,step,eval_metric,setting,device,commit,torch,hidden,batch,lr,forget_bias\n"
        + "".join(f"{m},adding,10,0,{step},{acc},smoke,cpu,abc1234,2.13.0,8,4,0.01,1.0\n"
                  for m, step, acc in (("rnn", 100, 0.5), ("rnn", 50, 0.9), ("lstm", 100, 0.25))))
    _study_csv(tmp_path / "gradnorm.csv", 
        "model,task,T,seed,phase,distance,grad_norm\n"
        "rnn,adding,10,0,init,0,2.0\nrnn,adding,10,0,init,9,1e-6\nrnn,adding,10,0,trained,9,5.0\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{tasks_report.BEGIN}\nold\n{tasks_report.END}\nb\n")
    assert tasks_report.main([str(tmp_path), "--check", str(readme)]) == 1
    assert tasks_report.main([str(tmp_path), "--write", str(readme)]) == 0
    text = readme.read_text()
    assert "| adding | 10 | 0.50 | 0.25 |" in text  # the last step, not the best one
    assert "RNN 5.0e-07." in text  # init phase only, far over near
    assert text.startswith("a\n") and text.endswith("\nb\n")
    assert tasks_report.main([str(tmp_path), "--check", str(readme)]) == 0


def test_tasks_summary_quotes_mean_and_min_max_over_seeds(tmp_path):
    """Three seeds: each cell is the mean over seeds with the min-max range; the four cells in the study's order
    (RNN, LSTM, use-gate LSTM, GRU), one row per (task, T); the gradient ratio is the geometric mean."""
    head = "model,task,T,seed,step,eval_metric,setting,device,commit,torch,hidden,batch,lr,forget_bias\n"
    runs = {("gru", 100): (0.9, 1.0, 0.95), ("rnn", 100): (0.05, 0.07, 0.06), ("lstm", 100): (0.2, 0.9, 1.0),
            ("usegate", 100): (0.5, 0.5, 0.5), ("rnn", 10): (0.4, 0.5, 0.6)}
    _study_csv(tmp_path / "curves.csv", head + "".join(
        f"{m},adding,{T},{sd},200,{acc},smoke,cpu,abc1234,2.13.0,64,64,0.01,1.0\n"
        for (m, T), accs in runs.items() for sd, acc in enumerate(accs)))
    _study_csv(tmp_path / "gradnorm.csv", "model,task,T,seed,phase,distance,grad_norm\n" + "".join(
        f"rnn,adding,100,{sd},init,{d},{v}\n" for sd, far in enumerate((1e-12, 1e-10, 1e-8))
        for d, v in ((0, 1.0), (99, far))))
    md = tasks_report.block(tmp_path)
    assert "3 seeds. Final eval accuracy, mean over seeds (min-max over seeds):" in md
    assert "| task | T | RNN | LSTM | use-gate LSTM | GRU |" in md
    assert "| adding | 10 | 0.50 (0.40-0.60) | - | - | - |" in md
    assert "| adding | 100 | 0.06 (0.05-0.07) | 0.70 (0.20-1.00) | 0.50 (0.50-0.50) | 0.95 (0.90-1.00) |" in md
    assert md.index("| adding | 10 |") < md.index("| adding | 100 |")
    assert "forget-gate bias 1.0 (LSTM, use-gate LSTM)" in md
    assert "(geometric mean over seeds, min-max): RNN 1.0e-10 (1.0e-12-1.0e-08)." in md
    # learned = mean >= 0.9: the GRU's 0.95 at T = 100 counts, the LSTM's 0.70 (one seed at 1.00) does not
    assert ("Largest adding T learned (mean final accuracy >= 0.9 over seeds; T run: 10, 100): RNN none, "
            "LSTM none, use-gate LSTM none, GRU T = 100.") in md
    assert "training jobs" not in md  # no wall_s column: no time claimed


def test_tasks_summary_sums_each_jobs_last_wall_time(tmp_path):
    head = "model,task,T,seed,step,eval_metric,setting,device,commit,torch,hidden,batch,lr,forget_bias,wall_s\n"
    rows = [("rnn", 0, 50, 20.0), ("rnn", 0, 100, 60.0), ("rnn", 1, 100, 120.0)]  # job (rnn, seed 0) ends at 60 s
    _study_csv(tmp_path / "curves.csv", head + "".join(
        f"{m},adding,10,{sd},{step},0.5,smoke,cpu,abc1234,2.13.0,8,4,0.01,1.0,{w}\n" for m, sd, step, w in rows))
    assert "2 training jobs, 3.0 minutes of training summed over jobs" in tasks_report.block(tmp_path)


def test_a_run_writing_its_own_outputs_does_not_mark_the_commit_dirty(tmp_path):
    """Rows record the source commit: a changed file under results/ (what a run writes) leaves it clean, a changed
    source file marks it "+dirty"."""
    import subprocess

    from experiments.results import commit_of

    def git(*a):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "a.csv").write_text("x\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    (tmp_path / "sub").mkdir()
    sha = commit_of(tmp_path, short=True)
    assert sha != "unknown" and not sha.endswith("+dirty")
    (tmp_path / "results" / "a.csv").write_text("y\n")
    assert commit_of(tmp_path, short=True) == commit_of(tmp_path / "sub", short=True) == sha
    (tmp_path / "code.py").write_text("x = 2\n")
    # the whole repository counts, also seen from a folder below its root
    assert commit_of(tmp_path, short=True) == commit_of(tmp_path / "sub", short=True) == sha + "+dirty"


def test_heads_and_the_cells_torch_nn_lacks_get_their_own_tables(tmp_path):
    """Rows with heads get tables of their own after the dense rows of their cell (against the dense block-diagonal
    module); the sLSTM's speedups are over the baseline its rows name (speedup_ref: the PyTorch reference)."""
    csv = tmp_path / "headline.csv"
    _fixture(csv)
    dense = report.block(csv)
    append_row(csv, _row(16, 1024, "bf16", "fwd", "cudnn", "", 3.0, heads=4))
    append_row(csv, _row(16, 1024, "bf16", "fwd", "fusedrnn", "auto", 1.0, heads=4))
    for backend, strategy, ms in (("reference", "", 40.0), ("nn_dense", "nn.LSTM", 3.0), ("fusedrnn", "auto", 2.0)):
        append_row(csv, _row(16, 1024, "bf16", "fwd", backend, strategy, ms, cell="slstm", heads=4,
                             speedup_ref="reference"))
    md = report.block(csv)
    assert md.startswith(dense[: -len(report.END)].rstrip())  # the dense LSTM's tables as they were
    heads = md[len(dense) - len(report.END):]
    assert "**fusedrnn LSTM, 4 heads speedup over cuDNN (nn.LSTM dense block-diagonal)**" in heads
    assert "| 16 | 1024 | **3× auto** |" in heads
    assert "**fusedrnn sLSTM, 4 heads speedup over reference (models.SLSTM)**" in heads
    assert "| 16 | 1024 | **20× auto** |" in heads
    assert "reference models.SLSTM median ms:" in heads and "| 16 | 1024 | 40 |" in heads  # no cuDNN algorithm
