"""PNG charts of a training run: loss / metric curves from the per-epoch CSV log, and grids
of augmented samples (middle z slice in 3D, mask outline overlaid when there is one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
# Figure without pyplot: no GUI backend, no global figure state (clusters have no display)
from matplotlib.figure import Figure

from bioflow.io import atomic_path


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    return path


def epoch_table(metrics_csv):
    """Lightning's CSV log (rows per step / epoch, sparse columns) -> one row per epoch."""
    df = pd.read_csv(metrics_csv)
    if "epoch" not in df:
        return pd.DataFrame()
    if "step" in df:  # LearningRateMonitor rows carry a step but no epoch: take the next row's
        df = df.sort_values("step", kind="stable")
        df["epoch"] = df["epoch"].bfill()
    df = df.dropna(subset=["epoch"])
    cols = [c for c in df.columns if c not in ("step", "epoch")]
    return df.groupby("epoch")[cols].last().sort_index()


def plot_history(metrics_csv, out_dir) -> list[Path]:
    """loss.png (train_loss + val_loss) and one PNG per other logged ``val_*`` / ``train_*`` metric."""
    out_dir = Path(out_dir)
    if not Path(metrics_csv).is_file():
        return []
    table = epoch_table(metrics_csv)
    if table.empty:
        return []
    written = []
    losses = [c for c in ("train_loss", "val_loss") if c in table and table[c].notna().any()]
    if losses:
        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        for c in losses:
            s = table[c].dropna()
            ax.plot(s.index + 1, s.values, marker="o", ms=3, label=c)
        ax.set_xlabel("epoch"), ax.set_ylabel("loss"), ax.legend(), ax.grid(alpha=0.3)
        written.append(_save(fig, out_dir / "loss.png"))
    for c in table.columns:
        if c in losses or not (c.startswith("val_") or c.startswith("train_") or c.startswith("lr")):
            continue
        s = table[c].dropna()
        if s.empty:
            continue
        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        ax.plot(s.index + 1, s.values, marker="o", ms=3)
        ax.set_xlabel("epoch"), ax.set_ylabel(c), ax.set_title(c), ax.grid(alpha=0.3)
        safe = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in c)
        written.append(_save(fig, out_dir / f"{safe}.png"))
    return written


def _display(img: np.ndarray) -> np.ndarray:
    """(C, *spatial) -> a 2D (or RGB) image: middle z slice, first channel or RGB, 1-99% scaled."""
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 4:
        img = img[:, img.shape[1] // 2]
    img = np.moveaxis(img[:3], 0, -1) if img.shape[0] >= 3 else img[0]
    lo, hi = np.percentile(img, [1, 99])
    return np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)


def save_sample(image, out_path, mask=None, title: str | None = None) -> Path:
    """One augmented sample (``(C, *spatial)``, optional mask ``(*spatial)``) as a PNG."""
    fig = Figure(figsize=(3, 3))
    ax = fig.subplots()
    shown = _display(image)
    ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray")
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim == 3:
            m = m[m.shape[0] // 2]
        if m.max() > 0:
            ax.contour(m, levels=np.unique(m)[1:] - 0.5, colors="r", linewidths=0.7)
    if title:
        ax.set_title(title, fontsize=8)
    ax.axis("off")
    return _save(fig, Path(out_path))
