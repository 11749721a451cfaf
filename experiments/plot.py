"""Figures from sweep CSVs alone, so anyone can redraw them:

    python -m experiments.plot results/batch.csv [more.csv ...] --out results/

Per cell, dtype and pass: a speedup heatmap of fusedrnn over B x H (vs cuDNN; vs torch_cpu on CPU: the torch.nn
module of the cell, nn.LSTM / nn.GRU / nn.RNN; drawn when the rows span at least 2 B and 2 H, coloured on a log
scale), ms vs B, vs H and vs T with p20/p80 bands (one line per backend/strategy), and the fraction of the
hardware floor reached (GPU rows only: a CPU run measures no floor). Files are named
``<kind>_<dtype>_<pass>.png`` for the LSTM (as before the sweep had cells) and ``<kind>_<cell>_<dtype>_<pass>.png``
for the other cells, ``_h<heads>`` after the cell with heads (``<kind>_lstm_h4_...``); a CSV from before the
``cell`` column is LSTM rows, one from before the ``heads`` column dense rows (heads 1). The sLSTM and the LayerNorm
cells' speedups are over their PyTorch reference (``experiments.backends``).
Failed rows are left out: rows with an error, and rows whose output failed the comparison with the baseline
(``results.wrong_output``: error WrongOutput, or from an older sweep a ``max_rel_err`` above the tolerance);
their number is printed. A CSV made on CPU is drawn into scratch/plots/ (never results/) with "CPU, not a GPU
benchmark" in every title.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from .grids import CELL_LABELS, NN_CELLS, NN_MODULES  # noqa: E402

CPU_TAG = "CPU, not a GPU benchmark"
CPU_OUT = Path("scratch/plots")
AXES = ("B", "H", "T")
FIXED = ("layers", "directions", "I_eq_H")

def baseline_label(cell: str, heads: int) -> str:
    """What the speedups of ``cell``'s rows with ``heads`` heads are over, in words."""
    from .backends import FUSEDRNN_CLASSES  # torch: only when a cell needs it

    if cell not in NN_CELLS:
        return f"models.{FUSEDRNN_CLASSES[cell]} PyTorch reference"
    return NN_MODULES[cell] + (" dense block-diagonal" if heads > 1 else "")


def check_readable(path) -> None:
    """ValueError with a one-line reason when ``path`` is not a complete sweep CSV of this version: missing,
    empty, a damaged or foreign header, or an incomplete or malformed record (what the sweep's resume sets
    aside)."""
    from .results import read_rows

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise ValueError(f"{p}: empty file, no header and no rows")
    read_rows(p)


def load(paths, dropped: dict | None = None) -> pd.DataFrame:
    """Concatenate sweep CSVs; keep the last row of each key, then only those that did not fail
    (``results.failed``: no error, no wrong output) and have a time, and add ``impl`` = backend or
    backend/strategy; rows without a cell (a CSV from before the column) are "lstm"; the rows of ``--packed`` or
    ``--resets`` sweeps are left out (the plots show padded batches without resets). ``dropped``, when given,
    gets the number of rows left out for an error ("error") and for a wrong output ("wrong"). Raises
    ValueError for a file that ``check_readable`` rejects."""
    from .results import ADDED, KEY, LEGACY_CELL, failed, wrong_output

    for p in paths:
        check_readable(p)
    frames = [pd.read_csv(p, dtype={"strategy": str, "error": str, "cudnn_algo": str, "cell": str},
                          keep_default_na=False,
                          na_values={"ms_p50": [""], "ms_p20": [""], "ms_p80": [""], "speedup": [""],
                                     "frac_floor": [""]}) for p in paths]
    for f in frames:
        if "cell" not in f:
            f["cell"] = LEGACY_CELL
        if "heads" not in f:
            f["heads"] = 1
        for c, v in ADDED.items():  # the later columns (--packed, --resets): a padded row without resets
            if c not in f:
                f[c] = v
    df = pd.concat(frames, ignore_index=True)
    df["cell"] = df["cell"].replace("", LEGACY_CELL)
    df["heads"] = pd.to_numeric(df["heads"].replace("", 1)).astype(int)
    df = df.drop_duplicates(list(KEY), keep="last")
    df = df[(df["packed"].astype(str).isin(["0", ""])) & (pd.to_numeric(df["resets_p"].replace("", 0)) == 0)]
    records = df[["error", "max_rel_err", "dtype"]].astype(str).to_dict("records")
    bad = np.array([failed(r) for r in records], dtype=bool)
    wrong = np.array([wrong_output(r) for r in records], dtype=bool)
    if dropped is not None:
        dropped.update(error=int((bad & ~wrong).sum()), wrong=int(wrong.sum()))
    df = df[~bad & df["ms_p50"].notna()].copy()
    for c in ("ms_p50", "ms_p20", "ms_p80", "speedup", "frac_floor"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df["impl"] = np.where(df["strategy"] != "", df["backend"] + "/" + df["strategy"], df["backend"])
    df["I_eq_H"] = df["I"] == df["H"]
    return df


def _footer(df: pd.DataFrame) -> str:
    first = df.iloc[0]
    parts = [f"{first['gpu']}", f"torch {first['torch']}", f"triton {first['triton']}"]
    if str(first.get("cudnn", "")):
        parts.append(f"cuDNN {first['cudnn']}")
    parts += [f"commit {str(first['commit'])[:10]}", f"{str(df['date'].min())[:10]}"]
    return " | ".join(parts)


def _save(fig, path: Path, footer: str, written: list, title: str) -> None:
    fig.text(0.01, 0.005, footer, fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append((path, title))


def _family(sub: pd.DataFrame, axis: str):
    """The rows of the largest family varying ``axis`` with the other axes fixed (None when < 2 points)."""
    others = [a for a in AXES if a != axis] + list(FIXED)
    best, best_n = None, 1
    for _, g in sub.groupby(others):
        n = g[axis].nunique()
        if n > best_n:
            best, best_n = g, n
    return best


def _luminance(rgba) -> float:
    """Relative luminance of an sRGB colour (0 black, 1 white), as the WCAG contrast ratio uses it."""
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _heatmap(sub, ref, title, path, footer, written):
    """fusedrnn's speedup over B x H at the most common T, one panel per strategy: the colour is log2 of the
    speedup (white = 1, red slower, blue faster), each cell annotated in a colour that reads on it. Not drawn
    for fewer than 2 B or 2 H (the ms_vs_B / ms_vs_H lines show those)."""
    fr = sub[(sub["backend"] == "fusedrnn") & (sub["speedup"] > 0)]
    if fr.empty:
        return
    T = fr["T"].mode().iloc[0]
    fr = fr[fr["T"] == T]
    if fr["B"].nunique() < 2 or fr["H"].nunique() < 2:
        return
    impls = sorted(fr["impl"].unique())
    fig, axs = plt.subplots(1, len(impls), figsize=(1.2 + 4.5 * len(impls), 4.2), squeeze=False)
    for ax, impl in zip(axs[0], impls):
        pv = fr[fr["impl"] == impl].pivot_table(index="B", columns="H", values="speedup", aggfunc="last")
        vals = pv.to_numpy(dtype=float)
        logs = np.log2(vals)
        lo, hi = np.nanmin(logs), np.nanmax(logs)
        norm = TwoSlopeNorm(vcenter=0.0, vmin=min(lo, -0.05), vmax=max(hi, 0.05))
        im = ax.imshow(logs, cmap="RdBu", norm=norm, aspect="auto", origin="lower")
        ax.set_xticks(range(len(pv.columns)), [str(c) for c in pv.columns])
        ax.set_yticks(range(len(pv.index)), [str(i) for i in pv.index])
        ax.set_xlabel("H (= I)")
        ax.set_ylabel("B")
        for (r, c), v in np.ndenumerate(vals):
            if np.isfinite(v):
                dark = _luminance(im.cmap(norm(np.log2(v)))) < 0.18  # where white and black contrast alike
                ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_title(f"{impl} vs {ref}, T={T}", fontsize=9)
        fig.colorbar(im, ax=ax, label="speedup (>1: faster; log scale)",
                     format=FuncFormatter(lambda x, _: f"{2 ** x:.3g}"))
    fig.suptitle(title, fontsize=10)
    _save(fig, path, footer, written, title)


def _lines(fam, axis, title, path, footer, written, ycol="ms_p50", band=True, ylabel="ms (p50, band p20-p80)"):
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for impl, g in fam.groupby("impl"):
        g = g.sort_values(axis)
        ax.plot(g[axis], g[ycol], marker="o", label=impl)
        if band:
            ax.fill_between(g[axis], g["ms_p20"], g["ms_p80"], alpha=0.2)
    ax.set_xscale("log", base=2)
    if ycol == "ms_p50":
        ax.set_yscale("log")
    ax.set_xlabel(axis)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    _save(fig, path, footer, written, title)


def _floor(sub, title, path, footer, written):
    sub = sub[sub["frac_floor"].notna()].sort_values(["B", "H", "T"])
    labels = sorted({(b, h, t) for b, h, t in zip(sub["B"], sub["H"], sub["T"])})
    pos = {k: i for i, k in enumerate(labels)}
    fig, ax = plt.subplots(figsize=(max(6.4, 0.45 * len(labels) + 2), 4.4))
    for impl, g in sub.groupby("impl"):
        xs = [pos[(b, h, t)] for b, h, t in zip(g["B"], g["H"], g["T"])]
        ax.plot(xs, g["frac_floor"], marker="o", label=impl)
    ax.set_xticks(range(len(labels)), [f"B{b} H{h} T{t}" for b, h, t in labels], rotation=60, ha="right",
                  fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("floor_ms / ms_p50 (1 = at the floor)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    _save(fig, path, footer, written, title)


def make_plots(csv_paths, out_dir) -> list[tuple[Path, str]]:
    """Draw every figure the data allows. Returns [(png path, title)]. CPU-made data goes to scratch/plots
    (whatever ``out_dir`` says, if it is under a results/ folder) with the CPU tag in its titles."""
    dropped: dict = {}
    df = load(csv_paths, dropped)
    if dropped["wrong"]:
        print(f"left out {dropped['wrong']} row(s) whose output failed the comparison with the baseline "
              "(error WrongOutput, or max_rel_err above the tolerance): never drawn as timings or speedups",
              file=sys.stderr)
    out = Path(out_dir)
    if df.empty:
        print("no rows without errors: nothing to plot", file=sys.stderr)
        return []
    cpu = bool((df["device"] == "cpu").any())
    if cpu and "results" in out.resolve().parts:
        print(f"CPU-made CSV: plotting into {CPU_OUT}/ instead of {out} (never results/)", file=sys.stderr)
        out = CPU_OUT
    out.mkdir(parents=True, exist_ok=True)
    tag = f" ({CPU_TAG})" if cpu else ""
    footer = _footer(df)
    written: list = []
    for (cell, heads, dtype, ps), sub in df.groupby(["cell", "heads", "dtype", "pass"]):
        ref = str(sub["speedup_ref"].iloc[0]) or "cudnn"
        kind = cell + (f"_h{heads}" if heads > 1 else "")
        stem = f"{dtype}_{ps}" if kind == "lstm" else f"{kind}_{dtype}_{ps}"
        name = CELL_LABELS.get(cell, cell) + (f", {heads} heads" if heads > 1 else "")
        what = f"{name} {dtype} {ps}"
        _heatmap(sub, ref, f"fusedrnn {name} speedup vs {ref} ({baseline_label(cell, heads)}), {dtype} {ps}{tag}",
                 out / f"heatmap_speedup_{stem}.png", footer, written)
        for axis in AXES:
            fam = _family(sub, axis)
            if fam is None:
                continue
            fixed = ", ".join(f"{a}={fam[a].iloc[0]}" for a in AXES if a != axis)
            _lines(fam, axis, f"time vs {axis} ({fixed}), {what}{tag}", out / f"ms_vs_{axis}_{stem}.png",
                   footer, written)
        gpu_rows = sub[sub["device"] != "cpu"]  # a CPU run measures no floor (older CPU CSVs have a noisy one)
        if not gpu_rows.empty:
            _floor(gpu_rows, f"fraction of the floor, {what}{tag}", out / f"floor_fraction_{stem}.png", footer,
                   written)
    if cpu:
        print("CPU rows: no floor-fraction plots (the floor needs a GPU's measured peaks)", file=sys.stderr)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="+", type=Path, help="sweep CSV file(s)")
    p.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: the first CSV's folder)")
    args = p.parse_args(argv)
    try:
        written = make_plots(args.csv, args.out or args.csv[0].parent)
    except (ValueError, OSError) as e:  # a damaged or unreadable CSV: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, _ in written:
        print(path)
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
