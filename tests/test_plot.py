"""experiments.plot draws every figure from a CSV alone; CPU-made data is tagged, kept out of results/ and gets no
floor plots; failed rows (an error, a wrong output) are never drawn; the speedup heatmap reads."""
from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
from experiments import plot
from experiments.results import append_row


def _fixture_csv(path, device="cuda", gpu="NVIDIA H200", dtypes=("fp16", "bf16"), cell=None):
    """A small synthetic GPU-like sweep: a B line, an H line and a T line, three backends, two dtypes and
    passes, plus one error row (which must be left out)."""
    configs = {(b, 1024, 1024) for b in (1, 16, 64)} | {(16, 1024, h) for h in (128, 512, 1024)} | \
              {(16, t, 1024) for t in (64, 256, 1024)}
    for (B, T, H), dtype, ps in itertools.product(sorted(configs), dtypes, ("fwd", "fwdbwd")):
        ref_ms = 1e-3 * T * (1 + H / 512) * (1 + B / 64) * (3 if ps == "fwdbwd" else 1)
        for backend, strategy, factor in (("cudnn", "", 1.0), ("fusedrnn", "per_step", 0.7),
                                          ("torch_loop", "", 4.0)):
            ms = ref_ms * factor
            append_row(path, {
                "device": device, "gpu": gpu, "B": B, "T": T, "H": H, "I": H, "layers": 1, "directions": 1,
                "dtype": dtype, "pass": ps, "backend": backend, "strategy": strategy,
                "cudnn_algo": "standard", "ms_p50": ms, "ms_p20": 0.95 * ms, "ms_p80": 1.1 * ms,
                "speedup": ref_ms / ms, "speedup_ref": "cudnn" if device == "cuda" else "torch_cpu",
                "floor_ms": 0.2 * ref_ms, "frac_floor": 0.2 * ref_ms / ms, "error": "", "torch": "2.11.0",
                "triton": "3.6.0", "cudnn": "91002", "commit": "abcdef0123", "date": "2026-01-02T03:04:05Z",
                **({"cell": cell} if cell else {})})
    append_row(path, {"device": device, "gpu": gpu, "B": 256, "T": 1024, "H": 2048, "I": 2048, "layers": 1,
                      "directions": 1, "dtype": "fp16", "pass": "fwd", "backend": "fusedrnn",
                      "strategy": "per_step", "error": "OOM: OutOfMemoryError: CUDA out of memory",
                      "commit": "abcdef0123", "date": "2026-01-02T03:04:05Z", "torch": "2.11.0", "triton": "3.6.0",
                      "speedup_ref": "cudnn"})


EXPECTED = [f"{kind}_{dt}_{ps}.png" for kind in ("heatmap_speedup", "ms_vs_B", "ms_vs_H", "ms_vs_T",
                                                  "floor_fraction")
            for dt in ("fp16", "bf16") for ps in ("fwd", "fwdbwd")]


def test_plot_draws_every_figure(tmp_path):
    csv_path = tmp_path / "fixture.csv"
    _fixture_csv(csv_path)
    out = tmp_path / "figs"
    written = plot.make_plots([csv_path], out)
    for name in EXPECTED:
        p = out / name
        assert p.exists() and p.stat().st_size > 5000, name
        assert plt.imread(p).shape[0] > 200
    assert sorted(p.name for p, _ in written) == sorted(EXPECTED)
    assert not any(plot.CPU_TAG in title for _, title in written)
    df = plot.load([csv_path])
    assert (df["error"] == "").all() and len(df) == 7 * 2 * 2 * 3  # 7 distinct configs, OOM row left out


def test_cpu_csv_is_tagged_and_kept_out_of_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    csv_path = tmp_path / "cpu.csv"
    _fixture_csv(csv_path, device="cpu", gpu="cpu (x86_64)", dtypes=("fp32",))
    written = plot.make_plots([csv_path], tmp_path / "results")
    # no floor-fraction plots from CPU rows (a CPU run measures no peaks; older CPU CSVs hold noise there)
    assert len(written) == 8 and len(list((tmp_path / plot.CPU_OUT).iterdir())) == 8
    assert not any("floor" in p.name for p, _ in written)
    assert not (tmp_path / "results").exists()
    for path, title in written:
        assert plot.CPU_TAG in title
        assert path.parent == plot.CPU_OUT and (tmp_path / path).stat().st_size > 0


def test_each_cell_gets_its_own_figures(tmp_path):
    """GRU rows beside the LSTM's: the LSTM's files keep their names, the GRU's carry the cell, and no figure
    mixes the two cells' lines; a CSV from before the cell column is the LSTM's."""
    csv_path = tmp_path / "cells.csv"
    _fixture_csv(csv_path, dtypes=("fp16",))
    _fixture_csv(csv_path, dtypes=("fp16",), cell="gru")
    written = plot.make_plots([csv_path], tmp_path / "figs")
    names = sorted(p.name for p, _ in written)
    lstm = [n for n in EXPECTED if "_fp16_" in n]
    assert names == sorted(lstm + [n.replace("_fp16_", "_gru_fp16_") for n in lstm])
    titles = dict((p.name, t) for p, t in written)
    gru_title = titles["heatmap_speedup_gru_fp16_fwd.png"]
    assert "GRU" in gru_title and "nn.GRU" in gru_title
    assert "GRU" not in titles["heatmap_speedup_fp16_fwd.png"] and "LSTM" in titles["ms_vs_B_fp16_fwd.png"]
    df = plot.load([csv_path])
    assert len(df) == 2 * 7 * 2 * 3 and set(df["cell"]) == {"lstm", "gru"}
    # the same rows without the column (the header from before it): read as LSTM rows
    import csv

    from experiments.results import LEGACY_COLUMNS, read_rows

    old = tmp_path / "old.csv"
    with old.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LEGACY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(r for r in read_rows(csv_path) if r["cell"] == "lstm")
    assert set(plot.load([old])["cell"]) == {"lstm"} and len(plot.load([old])) == 7 * 2 * 3


def test_plot_without_rows(tmp_path):
    csv_path = tmp_path / "empty.csv"
    append_row(csv_path, {"device": "cuda", "error": "RuntimeError: x", "dtype": "fp16", "pass": "fwd"})
    assert plot.make_plots([csv_path], tmp_path / "o") == []
    assert plot.main([str(csv_path), "--out", str(tmp_path / "o")]) == 1



def test_damaged_csv_gives_a_clear_error_not_a_traceback(tmp_path, capsys):
    good = tmp_path / "good.csv"
    _fixture_csv(good, dtypes=("fp16",))
    data = good.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    cases = {
        "truncated": data[: last + (len(data) - last) // 2],  # last record cut, no newline
        "header_cut": data[:50],
        "binary": data + b"\xff\xfe\x00garbage\n",
        "glued": data[: last + 30] + data[last:],  # a row appended onto a partial line
        "empty": b"",
    }
    for name, content in cases.items():
        p = tmp_path / f"{name}.csv"
        p.write_bytes(content)
        capsys.readouterr()
        assert plot.main([str(p), "--out", str(tmp_path / "o")]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(p) in err and "Traceback" not in err, (name, err)
        assert len(err.strip().splitlines()) == 1, (name, err)
    assert plot.main([str(tmp_path / "missing.csv")]) == 2


def _wrong(rows, **change):
    return [{**r, **change} if r["backend"] == "fusedrnn" and not r["error"] else r for r in rows]


def test_rows_whose_output_was_wrong_are_never_drawn(tmp_path, capsys):
    """A fusedrnn row whose output failed the comparison (error WrongOutput, or from an older sweep an empty error
    with max_rel_err inf or above the tolerance) is left out of every figure, and the plot says how many."""
    from experiments.results import read_rows

    good = tmp_path / "good.csv"
    _fixture_csv(good, dtypes=("fp16",))
    rows = read_rows(good)
    n_fused = sum(r["backend"] == "fusedrnn" and not r["error"] for r in rows)
    for name, change in (("old_inf", dict(max_rel_err="inf")), ("old_over", dict(max_rel_err="0.5")),
                         ("new", dict(error="WrongOutput: max_rel_err inf", ms_p50="", speedup=""))):
        p = tmp_path / f"{name}.csv"
        for r in _wrong(rows, **change):
            append_row(p, r)
        assert "fusedrnn" not in set(plot.load([p])["backend"]), name
        dropped = {}
        plot.load([p], dropped)
        assert dropped == {"wrong": n_fused, "error": 1}, name  # and the OOM row
    # drawn: a 2 x 2 grid whose fusedrnn rows are wrong has no heatmap left, and the plot says why
    small = tmp_path / "small.csv"
    _speedup_rows(small, {(1, 32): 2.0, (4, 32): 3.0, (1, 64): 2.5, (4, 64): 4.0}, max_rel_err="inf")
    capsys.readouterr()
    written = plot.make_plots([small], tmp_path / "figs")
    assert "left out 4 row(s) whose output failed" in capsys.readouterr().err
    assert written and not any("heatmap" in q.name for q, _ in written)  # no fusedrnn speedup left to draw
    # a tight but finite error is a measurement
    p = tmp_path / "fine.csv"
    for r in _wrong(rows, max_rel_err="0.01"):
        append_row(p, r)
    assert "fusedrnn" in set(plot.load([p])["backend"])


def _speedup_rows(path, grid, max_rel_err=1e-7):
    """fusedrnn and torch_cpu rows on CPU with the given {(B, H): speedup} (fusedrnn's ``max_rel_err`` given)."""
    for (B, H), s in grid.items():
        for backend, strategy, ms in (("torch_cpu", "", 1.0), ("fusedrnn", "per_step", 1.0 / s)):
            append_row(path, {"device": "cpu", "gpu": "cpu (x86_64)", "B": B, "T": 8, "H": H, "I": H, "layers": 1,
                              "directions": 1, "dtype": "fp32", "pass": "fwd", "backend": backend,
                              "strategy": strategy, "ms_p50": ms, "ms_p20": ms, "ms_p80": ms,
                              "speedup": 1.0 / ms, "speedup_ref": "torch_cpu",
                              "max_rel_err": max_rel_err if backend == "fusedrnn" else 0.0, "error": "",
                              "torch": "2.13.0", "triton": "3.6.0", "commit": "abc", "date": "2026-01-02T03:04:05Z"})


def _luminance(rgb):
    def lin(c):
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_speedup_heatmap_tells_cells_apart_and_its_labels_read(tmp_path, monkeypatch):
    """Speedups spanning orders of magnitude get distinct colours (a log scale), every annotation has a contrast
    of at least 4.5 with its cell, and a grid of one H (the smoke grid) gets no heatmap at all."""
    import matplotlib.colors as mcolors

    figs = {}
    real_save = plot._save

    def keep(fig, path, footer, written, title):
        figs[path.name] = fig
        fig.canvas.draw()
        for ax in fig.axes:
            for im in ax.get_images():
                figs[path.name + ":colors"] = im.cmap(im.norm(im.get_array()))
        figs[path.name + ":texts"] = [(t, t.get_position()) for ax in fig.axes[:1] for t in ax.texts]
        real_save(fig, path, footer, written, title)

    monkeypatch.setattr(plot, "_save", keep)
    smoke = tmp_path / "smoke.csv"
    _speedup_rows(smoke, {(1, 32): 0.0008, (4, 32): 0.003})
    names = [p.name for p, _ in plot.make_plots([smoke], tmp_path / "a")]
    assert not any(n.startswith("heatmap") for n in names) and "ms_vs_B_fp32_fwd.png" in names
    grid = tmp_path / "grid.csv"
    _speedup_rows(grid, {(1, 32): 0.0008, (4, 32): 0.003, (1, 64): 0.01, (4, 64): 2.5})
    plot.make_plots([grid], tmp_path / "b")
    colors = figs["heatmap_speedup_fp32_fwd.png:colors"].reshape(-1, 4)
    for i in range(len(colors)):
        for j in range(i):
            assert abs(colors[i] - colors[j])[:3].max() > 0.05, (i, j, colors)
    texts = figs["heatmap_speedup_fp32_fwd.png:texts"]
    assert len(texts) == 4
    cells = figs["heatmap_speedup_fp32_fwd.png:colors"]
    for t, (x, y) in texts:
        bg, fg = _luminance(cells[int(y), int(x)]), _luminance(mcolors.to_rgb(t.get_color()))
        contrast = (max(bg, fg) + 0.05) / (min(bg, fg) + 0.05)
        assert contrast >= 4.5, (t.get_text(), contrast)
