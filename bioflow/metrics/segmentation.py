"""Segmentation metrics: IoU (Jaccard) and Dice per class and for the foreground.

Counts first, ratios second: :func:`confusion_counts` gives per-class true positives, false
positives and false negatives (the last entry is the foreground, i.e. any class but 0, as one
class); IoU = TP / (TP + FP + FN) and Dice = 2 TP / (2 TP + FP + FN). A class absent from both
prediction and ground truth has an undefined score (NaN) and is left out of means.

Levels, as BiaPy reports them: ``per_patch`` (the model's raw output on non-overlapping patches,
computed by predict), ``per_image`` (images reconstructed from tiles), ``full_image`` (whole-image
inference), ``post_processing`` (z / yz filtered). Each level holds the mean over its items of
``foreground`` and ``class_<k>``, ``mean`` (over classes) and ``foreground_pooled`` (counts summed
over every pixel of the level, the "global" IoU). ``ci95`` holds 95% bootstrap intervals of the
foreground scores (items resampled: images, or patches for ``per_patch``), keyed
``<iou|dice>.<level>.<foreground|foreground_pooled>``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from bioflow.data.manifest import entries, load_manifest, read_entry_image, read_entry_mask, relative_name
from bioflow.errors import BioflowError
from bioflow.io import atomic_path, read_json, write_json
from bioflow.metrics import gallery

log = logging.getLogger(__name__)

LEVELS = {"per_image": "per_image", "full_image": "full_image", "post_processing": "full_post_processing"}


# --- pure functions --------------------------------------------------------------------------

def confusion_counts(pred: np.ndarray, gt: np.ndarray, n_classes: int, ignore_index=None) -> np.ndarray:
    """``(n_classes + 1, 3)`` int64 array of (TP, FP, FN); row ``n_classes`` is the foreground."""
    pred = np.asarray(pred).ravel()
    gt = np.asarray(gt).ravel()
    if pred.shape != gt.shape:
        raise ValueError(f"prediction and ground truth differ in size: {pred.size} vs {gt.size}")
    if ignore_index is not None:
        keep = gt != ignore_index
        pred, gt = pred[keep], gt[keep]
    k = n_classes
    cm = np.bincount(gt.astype(np.int64) * k + np.clip(pred.astype(np.int64), 0, k - 1),
                     minlength=k * k).reshape(k, k)  # rows gt, cols pred
    return counts_from_confusion(cm)


def counts_from_confusion(cm: np.ndarray) -> np.ndarray:
    """(TP, FP, FN) per class plus the foreground row from a ``(k, k)`` confusion matrix
    (rows ground truth, columns prediction); shared with the training-time metrics."""
    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[0]
    tp = np.diag(cm)
    out = np.zeros((k + 1, 3), dtype=np.int64)
    out[:k, 0], out[:k, 1], out[:k, 2] = tp, cm.sum(0) - tp, cm.sum(1) - tp
    out[k] = (cm[1:, 1:].sum(), cm[0, 1:].sum(), cm[1:, 0].sum())
    return out


def class_mean(values: np.ndarray, n_classes: int) -> float:
    """Mean over the classes of per-class scores, leaving out the undefined (NaN) ones: a class
    absent from both prediction and ground truth does not count. NaN when none is defined."""
    v = np.asarray(values, dtype=np.float64)[..., :n_classes]
    return float(np.nanmean(v)) if not np.isnan(v).all() else float("nan")


def iou_from_counts(counts: np.ndarray) -> np.ndarray:
    """TP / (TP + FP + FN) per row; NaN where the class is absent from prediction and truth.
    The one IoU definition: the metrics stage and the training-time ``val_iou`` use it."""
    tp, fp, fn = (np.asarray(counts, dtype=np.float64)[..., i] for i in range(3))
    den = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, tp / np.where(den > 0, den, 1), np.nan)


def dice_from_counts(counts: np.ndarray) -> np.ndarray:
    tp, fp, fn = (np.asarray(counts, dtype=np.float64)[..., i] for i in range(3))
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), np.nan)


def iou(pred, gt, n_classes: int, ignore_index=None) -> dict:
    """IoU per class and foreground for one prediction (``{"class_0": .., "foreground": ..}``)."""
    return _named(iou_from_counts(confusion_counts(pred, gt, n_classes, ignore_index)), n_classes)


def dice(pred, gt, n_classes: int, ignore_index=None) -> dict:
    return _named(dice_from_counts(confusion_counts(pred, gt, n_classes, ignore_index)), n_classes)


def _f(v) -> float | None:
    v = float(v)
    return None if np.isnan(v) else v


def _named(values: np.ndarray, n_classes: int) -> dict:
    out = {f"class_{k}": _f(values[k]) for k in range(n_classes)}
    out["foreground"] = _f(values[n_classes])
    return out


def summarize(counts_list: list[np.ndarray], n_classes: int, score=iou_from_counts) -> dict:
    """Mean over items (NaN-skipping) per class and foreground, mean over classes, pooled foreground."""
    if not counts_list:
        return {}
    arr = np.stack(counts_list)
    scores = score(arr)                       # (items, n_classes + 1)
    with warnings.catch_warnings():           # all-NaN columns (class never present) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(scores, axis=0)
    out = _named(means, n_classes)
    out["mean"] = _f(class_mean(means, n_classes))
    out["foreground_pooled"] = _f(score(arr.sum(0))[n_classes])
    out["n"] = int(len(counts_list))
    return out


def bootstrap_ci(counts_list: list[np.ndarray], n_classes: int, n_resamples: int, score=iou_from_counts,
                 seed: int = 0) -> dict:
    """95% percentile intervals of the foreground score, mean over items (``foreground``) and
    pooled (``foreground_pooled``), over ``n_resamples`` resamples of the items (images, or
    patches) with replacement; ``{}`` with fewer than 2 items or no resamples."""
    n = len(counts_list)
    if n_resamples <= 0 or n < 2:
        return {}
    fg = np.stack(counts_list)[:, n_classes].astype(np.float64)   # (items, 3) foreground TP FP FN
    per_item = score(fg)                                           # (items,), NaN where undefined
    valid = ~np.isnan(per_item)
    rng = np.random.default_rng(seed)
    means, pooled = [], []
    step = max(1, 2_000_000 // n)  # resamples per chunk: a (chunk, items) weight matrix stays small
    for start in range(0, n_resamples, step):
        # how often each item is drawn in n draws with replacement, one row per resample
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(step, n_resamples - start)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            means.append((w @ np.where(valid, per_item, 0.0)) / (w @ valid))
        pooled.append(score(w @ fg))                               # counts summed per resample
    out = {}
    for key, v in (("foreground", np.concatenate(means)), ("foreground_pooled", np.concatenate(pooled))):
        v = v[~np.isnan(v)]
        if len(v):
            out[key] = [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
    return out


# --- the stage ---------------------------------------------------------------------------------

def _label_image(path: Path, ndim: int, n_classes: int) -> np.ndarray:
    """A prediction TIFF as class ids: label images as they are, probability maps argmaxed."""
    arr = tifffile.imread(path)
    if arr.ndim == ndim + 1 and arr.shape[-1] == n_classes and np.issubdtype(arr.dtype, np.floating):
        return np.argmax(arr, axis=-1)
    return arr


def _examples(manifest, labelled, rows, run_dir: Path, ndim: int, n_classes: int) -> list[dict]:
    """``run_dir/overlays/{worst,median,best}.png`` by per-image foreground IoU (the tiled
    prediction), listed for metrics.json and the report."""
    by_name = {relative_name(e): e for e in labelled}

    def load(name):
        e = by_name[name]
        pred = _label_image(run_dir / "per_image" / (Path(name).stem + ".tif"), ndim, n_classes)
        return read_entry_image(manifest, e), read_entry_mask(manifest, e), pred

    picks = gallery.pick_examples([(r["file"], r.get("per_image_iou_foreground")) for r in rows])
    return gallery.segmentation_examples(picks, load, ndim, run_dir / "overlays")


def evaluate(cfg: dict, run_id, manifest_path, run_dir) -> dict:
    """Stage metrics: ``run_dir/metrics.json`` + ``run_dir/metrics_per_image.csv`` +
    ``run_dir/overlays/`` (image | truth | prediction of the worst, median and best test images)."""

    run_dir = Path(run_dir)
    manifest = load_manifest(manifest_path)
    n_classes = int(cfg["model"]["n_classes"])
    ndim = int(cfg["experiment"]["ndim"])
    ignore = cfg["train"]["ignore_index"]
    test = entries(manifest, "test")
    labelled = [e for e in test if e.get("mask")]
    result: dict = {"run_id": run_id, "n_classes": n_classes, "n_test_images": len(test)}
    if not cfg["data"]["test_has_labels"] or not labelled:
        result["labels_available"] = False
        write_json(run_dir / "metrics.json", result)
        log.info("metrics: test set has no labels; nothing to score")
        return result
    result["labels_available"] = True

    counts = {lvl: [] for lvl in LEVELS}
    rows = []
    for e in labelled:
        name = relative_name(e)
        gt = read_entry_mask(manifest, e)
        row = {"file": name}
        for lvl, folder in LEVELS.items():
            path = run_dir / folder / (Path(name).stem + ".tif")
            if not path.is_file():
                if lvl == "per_image" or (run_dir / folder).is_dir():
                    raise BioflowError(f"{path}: prediction missing; rerun predict for run {run_id}")
                continue  # a level that was not produced (full_image off, no post-processing)
            pred = _label_image(path, ndim, n_classes)
            if pred.shape != gt.shape:
                raise BioflowError(f"{path}: prediction shape {pred.shape} differs from the mask "
                                   f"{e['mask']} {gt.shape}; rerun predict")
            c = confusion_counts(pred, gt, n_classes, ignore)
            counts[lvl].append(c)
            for metric, fn in (("iou", iou_from_counts), ("dice", dice_from_counts)):
                vals = fn(c)
                row[f"{lvl}_{metric}_foreground"] = _f(vals[n_classes])
                for k in range(n_classes):
                    row[f"{lvl}_{metric}_class_{k}"] = _f(vals[k])
        rows.append(row)

    patch_file = run_dir / "patch_metrics.json"
    if patch_file.is_file():
        pm = read_json(patch_file)
        patches = pm["patches"]
        result["per_patch_source"] = pm.get("source", "independent")  # files before the key: independent
        counts["per_patch"] = [np.asarray(p["counts"], dtype=np.int64) for p in patches]
    boot = int(cfg["metrics"]["bootstrap"])
    result["ci95"] = {}  # keyed like the report's metric names, as classification's
    for metric, fn in (("iou", iou_from_counts), ("dice", dice_from_counts)):
        levels = [lvl for lvl in ("per_patch", "per_image", "full_image", "post_processing") if counts.get(lvl)]
        result[metric] = {lvl: summarize(counts[lvl], n_classes, fn) for lvl in levels}
        for lvl in levels:
            for k, v in bootstrap_ci(counts[lvl], n_classes, boot, fn).items():
                result["ci95"][f"{metric}.{lvl}.{k}"] = v
    result["bootstrap"] = boot
    result["n_scored_images"] = len(rows)
    result["examples"] = _examples(manifest, labelled, rows, run_dir, ndim, n_classes)
    write_json(run_dir / "metrics.json", result)
    with atomic_path(run_dir / "metrics_per_image.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    iou_ = result["iou"]
    log.info("metrics: foreground IoU %s", {k: v.get("foreground") for k, v in iou_.items()})
    return result
