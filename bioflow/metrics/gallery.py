"""What the model gets wrong, as pictures for the report (written by the metrics stages).

* classification: the most confident mistakes per class (:func:`classification_mistakes`),
  each a thumbnail of the test image with its true class, the decision and its probability;
* segmentation: the worst, median and best test images by foreground IoU
  (:func:`segmentation_examples`), each as image | ground truth | prediction.

3D images show one z slice (the one with the most foreground in truth and prediction); large
images are shown subsampled. Display scaling (1st-99.8th percentile per image) is for the eye
only and touches no result.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bioflow.data.manifest import entries, read_entry_image
from bioflow.io import atomic_dir

log = logging.getLogger(__name__)

MISTAKES_PER_CLASS = 6
THUMB_MAX = 160       # longest side of a classification thumbnail (pixels)
OVERLAY_MAX = 384     # longest side of one segmentation panel
ALPHA = 0.45
# class k > 0 of a mask: a distinct colour (k-1 modulo the palette)
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60]], dtype=np.float32)


# --- pictures ------------------------------------------------------------------------------

def _stride(shape, max_side: int) -> int:
    return max(1, int(np.ceil(max(shape) / max_side)))


def display(image: np.ndarray, max_side: int, step: int | None = None) -> np.ndarray:
    """A ``y,x,c`` image as uint8 grey ``(y, x)`` or RGB ``(y, x, 3)`` (3 channels), subsampled so
    its longest side fits ``max_side`` (or by ``step``); other channel counts show channel 0."""
    step = step or _stride(image.shape[:2], max_side)
    img = np.asarray(image[::step, ::step], dtype=np.float32)
    img = img if img.shape[-1] == 3 else img[..., 0]
    finite = img[np.isfinite(img)]
    lo, hi = (np.percentile(finite, (1, 99.8)) if finite.size else (0.0, 1.0))
    scaled = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return (np.nan_to_num(scaled) * 255).astype(np.uint8)


def _rgb(grey_or_rgb: np.ndarray) -> np.ndarray:
    return np.repeat(grey_or_rgb[..., None], 3, -1) if grey_or_rgb.ndim == 2 else grey_or_rgb


def tint(base: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``base`` (uint8 grey / RGB) with every class > 0 of ``mask`` (same y, x) tinted."""
    out = _rgb(base).astype(np.float32)
    m = np.asarray(mask)
    fg = m > 0
    if fg.any():
        colours = PALETTE[(m[fg].astype(np.int64) - 1) % len(PALETTE)]
        out[fg] = (1 - ALPHA) * out[fg] + ALPHA * colours
    return out.astype(np.uint8)


def save_png(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path, format="PNG")
    return path


def _slice_z(image, gt, pred, ndim: int):
    """The y-x plane to show: 2D as is; 3D the z slice with the most foreground in truth and
    prediction (the middle one when there is none)."""
    if ndim == 2:
        return image, gt, pred, None
    area = (np.asarray(gt) > 0).sum((1, 2)) + (np.asarray(pred) > 0).sum((1, 2))
    z = int(np.argmax(area)) if area.any() else image.shape[0] // 2
    return image[z], gt[z], pred[z], z


def overlay_panels(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, ndim: int) -> tuple[np.ndarray, int | None]:
    """image | ground truth tinted | prediction tinted, side by side (uint8 RGB), and the z shown."""
    image, gt, pred, z = _slice_z(image, gt, pred, ndim)
    step = _stride(image.shape[:2], OVERLAY_MAX)
    base = display(image, OVERLAY_MAX, step)
    panels = [_rgb(base), tint(base, gt[::step, ::step]), tint(base, pred[::step, ::step])]
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1), z


# --- classification -----------------------------------------------------------------------------

def _entry_of(df: pd.DataFrame, manifest: dict) -> dict | None:
    """predictions.csv row index -> test entry: predict writes one row per test entry, in order
    (checked by file name); None when the table does not match the manifest."""
    test = entries(manifest, "test")
    if len(test) != len(df) or any(Path(e["path"]).name != Path(f).name for e, f in zip(test, df["file"])):
        return None
    return dict(zip(df.index, test))


def _mistake_rows(labelled: pd.DataFrame, names: list[str], multilabel: bool, k: int) -> dict[str, list[dict]]:
    """{class: [row, ...]}: per true class (per label for multi-label) its ``k`` wrong decisions
    with the highest probability for the decision made. The decision is the thresholded one
    when predictions.csv holds it (inference.threshold), else the argmax."""
    out = {}
    if multilabel:
        for c in names:
            col = f"pred_thresholded_{c}" if f"pred_thresholded_{c}" in labelled else f"pred_{c}"
            true, dec, p = labelled[f"true_{c}"].astype(int), labelled[col].astype(int), labelled[f"prob_{c}"]
            wrong = labelled[true != dec]
            conf = np.where(dec[wrong.index] == 1, p[wrong.index], 1 - p[wrong.index])
            order = np.argsort(-conf, kind="stable")[:k]
            out[c] = [{"index": int(wrong.index[i]), "file": wrong["file"].iloc[i],
                       "error": "false positive" if dec[wrong.index[i]] == 1 else "false negative",
                       "prob": float(p[wrong.index[i]]), "confidence": float(conf[i])} for i in order]
        return out
    col = "pred_class_thresholded" if "pred_class_thresholded" in labelled else "pred_class"
    for c in names:
        wrong = labelled[(labelled["true_class"] == c) & (labelled[col] != c)]
        conf = np.array([float(r[f"prob_{r[col]}"]) for _, r in wrong.iterrows()])
        order = np.argsort(-conf, kind="stable")[:k]
        out[c] = [{"index": int(wrong.index[i]), "file": wrong["file"].iloc[i], "predicted": wrong[col].iloc[i],
                   "prob": float(conf[i]), "prob_true": float(wrong[f"prob_{c}"].iloc[i])} for i in order]
    return out


def classification_mistakes(df: pd.DataFrame, labelled: pd.DataFrame, manifest: dict, names: list[str],
                            multilabel: bool, out_dir: Path, k: int = MISTAKES_PER_CLASS) -> dict:
    """``out_dir`` (replaced) with a thumbnail per listed mistake; returns
    ``{"decision": ..., "per_class": {class: [{file, ..., "thumbnail"}]}}`` for metrics.json."""
    per = _mistake_rows(labelled, names, multilabel, k)
    by_index = _entry_of(df, manifest)
    if by_index is None:
        log.warning("predictions.csv does not list the manifest's test images in order: mistakes without "
                    "thumbnails")
    with atomic_dir(out_dir) as tmp:
        for ci, c in enumerate(names):
            for rank, m in enumerate(per[c]):
                entry = None if by_index is None else by_index.get(m["index"])
                if entry is None:
                    continue
                image = read_entry_image(manifest, entry)
                if manifest["ndim"] == 3:
                    image = image[image.shape[0] // 2]
                name = f"{ci}_{rank}.png"
                save_png(display(image, THUMB_MAX), tmp / name)
                m["thumbnail"] = f"{out_dir.name}/{name}"
    thresholded = "pred_class_thresholded" in labelled
    for rows in per.values():
        for m in rows:
            m.pop("index")
    return {"decision": "thresholded" if thresholded else "argmax", "per_class": per}


# --- segmentation --------------------------------------------------------------------------------

def pick_examples(scores: list[tuple[str, float | None]]) -> list[tuple[str, str, float]]:
    """[(which, file, score)] for the worst, median and best scored files (undefined scores
    left out; fewer when there are fewer than three files)."""
    scored = sorted(((s, f) for f, s in scores if s is not None and not np.isnan(s)), key=lambda t: (t[0], t[1]))
    if not scored:
        return []
    picks = [("worst", 0), ("median", len(scored) // 2), ("best", len(scored) - 1)]
    seen, out = set(), []
    for which, i in picks:
        if i not in seen:
            seen.add(i)
            out.append((which, scored[i][1], float(scored[i][0])))
    return out


def segmentation_examples(examples: list[tuple[str, str, float]], load, ndim: int, out_dir: Path) -> list[dict]:
    """``out_dir`` (replaced) with ``<which>.png`` (image | ground truth | prediction) for each
    of ``examples`` (:func:`pick_examples`); ``load(file) -> (image, gt, pred)``."""
    out = []
    with atomic_dir(out_dir) as tmp:
        for which, name, score in examples:
            image, gt, pred = load(name)
            panels, z = overlay_panels(image, gt, pred, ndim)
            save_png(panels, tmp / f"{which}.png")
            out.append({"which": which, "file": name, "iou_foreground": score, "z": z,
                        "image": f"{out_dir.name}/{which}.png"})
    return out
