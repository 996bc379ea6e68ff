"""Stage ``metrics`` (patch classification): patch metrics and per-image defect masks rebuilt
from the patch predictions.

Patch metrics (labelled, non-``#DISCARD#`` test patches): accuracy, per-class precision /
recall / F1 (``sklearn.metrics``), confusion matrix.

Reconstruction (quadra's ``reconstruct_patch``), per test image on its patch grid:
``major_voting``: a pixel takes the defect class predicted by most of the patches covering
it (ties: the higher priority); good votes do not count, so a pixel is good only when no
patch covering it is defective; ``priority``: the top-priority defect class among them.
Priority: ``patches.class_priority`` (names, highest first), else the higher class index.
Classes in ``patches.annotated_good`` count as good in predictions and masks.

Per image: the annotated defects (connected regions of the true mask) hit or missed, the
predicted regions with no true defect (false regions), the predicted regions as polygons per
class (``reconstruction_results.json``), the pixel IoU of the defect area, and an overlay
picture (``overlays/<image>.png``: predicted defects tinted per class, true defect outlines
in green). Image-level detection: an image is predicted defective when any pixel of its
reconstruction is. 95% bootstrap intervals (``metrics.bootstrap`` resamples of the test
images, or of the patches for the per-class F1).
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

import numpy as np

from bioflow.data.patch_sampling import pad_to, resolve
from bioflow.errors import BioflowError
from bioflow.io import atomic_dir, atomic_path, read_image, read_json, read_mask, write_json
from bioflow.prepare.patches import grid

log = logging.getLogger(__name__)
COLOURS = np.array([[0, 0, 0], [230, 25, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], np.uint8)


def priority_rank(classes: list[str], class_priority) -> np.ndarray:
    """rank[class index]: larger wins; good (0) always lowest."""
    n = len(classes)
    if not class_priority:
        return np.arange(n)
    order = [classes.index(c) for c in class_priority if c in classes and classes.index(c) != 0]
    rest = [i for i in range(n - 1, 0, -1) if i not in order]  # unnamed: higher index first
    rank = np.zeros(n, np.int64)
    for r, cls in enumerate(reversed(order + rest)):
        rank[cls] = r + 1
    return rank


def reconstruct(shape, size, ys, xs, preds, n_classes: int, method: str, rank: np.ndarray) -> np.ndarray:
    """The class-index mask of an image of ``shape`` from its grid predictions."""
    ph, pw = size
    h, w = max(shape[0], ph), max(shape[1], pw)
    votes = np.zeros((n_classes, h, w), np.int32)
    for (y, x), k in zip(((y, x) for y in ys for x in xs), preds):
        if k > 0:
            votes[k, y:y + ph, x:x + pw] += 1
    if method == "priority":
        score = (votes > 0) * rank[:, None, None]
    else:  # most votes, ties to the higher rank
        score = votes * (n_classes + 1) + (votes > 0) * rank[:, None, None]
    out = score.argmax(0)
    out[votes[1:].sum(0) == 0] = 0
    return out[: shape[0], : shape[1]].astype(np.uint8)


def polygons(mask: np.ndarray, classes: list[str]) -> list[dict]:
    """Predicted regions as polygons: ``[{"label", "points": [{"x", "y"}, ...]}]``."""
    from skimage.measure import approximate_polygon, find_contours, label
    out = []
    for k in np.unique(mask):
        if k == 0:
            continue
        lab = label(mask == k, connectivity=2)
        for r in range(1, lab.max() + 1):
            region = np.pad(lab == r, 1)
            for contour in find_contours(region.astype(np.uint8), 0.5):
                poly = approximate_polygon(contour - 1, tolerance=1.0)
                out.append({"label": classes[k], "points": [{"x": round(float(x), 1), "y": round(float(y), 1)}
                                                            for y, x in poly]})
    return out


def overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None) -> np.ndarray:
    """RGB uint8: the image in grey, predicted classes tinted, true defect outlines green."""
    from scipy.ndimage import binary_erosion
    img = image.astype(np.float64)
    img = img.mean(-1) if img.ndim == 3 else img
    lo, hi = np.percentile(img, [1, 99.8])
    grey = np.clip((img - lo) / max(hi - lo, 1e-9), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, -1)
    colours = COLOURS[1 + (np.arange(int(pred.max()) + 1) - 1) % (len(COLOURS) - 1)]
    sel = pred > 0
    rgb[sel] = 0.55 * rgb[sel] + 0.45 * colours[pred[sel]]
    if gt is not None:
        d = gt > 0
        edge = d & ~binary_erosion(d, iterations=2)
        rgb[edge] = [0, 255, 0]
    return rgb.astype(np.uint8)


def _ci(values: np.ndarray, stat, n: int, seed: int = 0):
    if n <= 0 or len(values) == 0:
        return None
    rng = np.random.default_rng(seed)
    res = []
    for _ in range(n):
        v = stat(rng.integers(0, len(values), len(values)))
        if v is not None and np.isfinite(v):
            res.append(v)
    return [float(np.percentile(res, 2.5)), float(np.percentile(res, 97.5))] if res else None


def f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 (0 where undefined, as sklearn's zero_division=0)."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def patch_f1_ci(y: np.ndarray, yp: np.ndarray, classes: list[str], n: int, seed: int = 0) -> dict:
    """95% bootstrap intervals of the per-class and macro patch F1 (patches resampled); one
    confusion matrix per resample (bincount), so 1000 resamples of 10^4 patches take a second."""
    k = len(classes)
    if n <= 0 or len(y) == 0:
        return {}
    rng = np.random.default_rng(seed)
    code = np.asarray(y) * k + np.asarray(yp)
    f1s = np.array([f1_from_confusion(np.bincount(code[rng.integers(0, len(code), len(code))],
                                                  minlength=k * k).reshape(k, k)) for _ in range(n)])
    present = np.bincount(np.asarray(y), minlength=k) > 0
    out = {f"patch_f1[{c}]": [float(np.percentile(f1s[:, i], 2.5)), float(np.percentile(f1s[:, i], 97.5))]
           for i, c in enumerate(classes) if present[i]}
    macro = f1s.mean(1)
    out["f1_macro"] = [float(np.percentile(macro, 2.5)), float(np.percentile(macro, 97.5))]
    return out


def detection(pred_def: np.ndarray, true_def: np.ndarray):
    tp = int((pred_def & true_def).sum())
    p = tp / int(pred_def.sum()) if pred_def.sum() else None
    r = tp / int(true_def.sum()) if true_def.sum() else None
    return p, r


def evaluate(cfg: dict, info_path, predictions_csv, run_dir) -> dict:
    import pandas as pd
    from PIL import Image
    from skimage.measure import label
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    from bioflow.metrics.classification import _plot_confusion

    run_dir = Path(run_dir)
    info = read_json(info_path)
    patches_dir = Path(info_path).parent
    classes = list(info["classes"])
    n = len(classes)
    table = pd.read_csv(predictions_csv, keep_default_na=False)
    to_idx = {c: i for i, c in enumerate(classes)}
    pred_idx = table["pred"].map(to_idx).to_numpy()
    ag = [to_idx[c] for c in (cfg["patches"]["annotated_good"] or [])]
    boot = int(cfg["metrics"]["bootstrap"])
    metrics: dict = {"n_patches": int(len(table))}
    if not cfg["data"]["test_has_labels"]:
        write_json(run_dir / "metrics.json", {**metrics, "labels_available": False})
        return metrics
    keep = (table["label"] != "") & (~table["discard"].astype(bool))
    y, yp = table.loc[keep, "label"].map(to_idx).to_numpy(), pred_idx[keep.to_numpy()]
    labels = list(range(n))
    prec, rec, f1, sup = precision_recall_fscore_support(y, yp, labels=labels, zero_division=0)
    cm = confusion_matrix(y, yp, labels=labels)
    metrics.update({"accuracy": float(accuracy_score(y, yp)),
                    "f1_macro": float(f1_score(y, yp, labels=labels, average="macro", zero_division=0)),
                    "n_discarded": int((table["discard"].astype(bool)).sum()),
                    "per_class": {c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                                      "support": int(sup[i])} for i, c in enumerate(classes)},
                    "confusion_matrix": cm.tolist(), "class_names": classes})
    ci = patch_f1_ci(y, yp, classes, boot)

    rank = priority_rank(classes, cfg["patches"]["class_priority"])
    method = cfg["patches"]["reconstruction"]
    by_image = {img: g.sort_values("index") for img, g in table.groupby("image")}
    results, per_image = [], []
    inter = np.zeros(n)
    union = np.zeros(n)
    with atomic_dir(run_dir / "overlays") as tmp_dir:
        for item in info.get("test_files") or []:
            img_path = resolve(patches_dir, item["image_path"])
            stem = img_path.stem
            image = read_image(img_path, 2, int(info["channels"]))
            shape = image.shape[:2]
            size, ys, xs = grid(shape, info["patch_size"], info["patch_number"], float(info["overlap"]))
            g = by_image.get(stem)
            if g is None or len(g) != len(ys) * len(xs):
                raise BioflowError(f"{predictions_csv}: {0 if g is None else len(g)} predictions for {stem}, "
                                   f"its grid has {len(ys) * len(xs)}; rerun predict")
            preds = g["pred"].map(to_idx).to_numpy().copy()
            preds[np.isin(preds, ag)] = 0
            rec_mask = reconstruct(shape, size, ys, xs, preds, n, method, rank)
            gt = None
            if item.get("mask_path"):
                gt = read_mask(resolve(patches_dir, item["mask_path"]), 2).astype(np.int64)
            entry = {"file_name": img_path.name, "image_path": item["image_path"], "mask_path": item.get("mask_path"),
                     "prediction": polygons(rec_mask, classes)}
            if gt is not None:
                gt[np.isin(gt, ag)] = 0
                gt_regions = label(gt > 0, connectivity=2)
                hits = [{"label": classes[int(gt[gt_regions == r].max())],
                         "hit": bool((rec_mask[gt_regions == r] > 0).any())} for r in range(1, gt_regions.max() + 1)]
                pr = label(rec_mask > 0, connectivity=2)
                false_regions = sum(1 for r in range(1, pr.max() + 1) if not (gt[pr == r] > 0).any())
                i_def = int(((rec_mask > 0) & (gt > 0)).sum())
                u_def = int(((rec_mask > 0) | (gt > 0)).sum())
                for k in range(n):
                    inter[k] += ((rec_mask == k) & (gt == k)).sum()
                    union[k] += ((rec_mask == k) | (gt == k)).sum()
                entry.update(defects=hits, false_regions=false_regions,
                             iou=(i_def / u_def) if u_def else None)
                per_image.append({"defective": bool((gt > 0).any()), "pred_defective": bool((rec_mask > 0).any()),
                                  "inter": i_def, "union": u_def, "hits": sum(h["hit"] for h in hits),
                                  "defects": len(hits), "false_regions": false_regions})
            results.append(entry)
            Image.fromarray(overlay(pad_to(image, shape, "constant")[: shape[0], : shape[1]], rec_mask, gt)).save(
                tmp_dir / f"{stem}.png")
    write_json(run_dir / "reconstruction_results.json", results)
    if per_image:
        pdf = pd.DataFrame(per_image)
        pd_, td = pdf["pred_defective"].to_numpy(), pdf["defective"].to_numpy()
        inter_, union_ = pdf["inter"].to_numpy(), pdf["union"].to_numpy()
        idx_all = np.arange(len(pdf))

        def iou_of(idx):
            u = union_[idx].sum()
            return float(inter_[idx].sum() / u) if u else None

        p, r = detection(pd_, td)
        metrics["image_detection"] = {"precision": p, "recall": r, "n_images": int(len(pdf)),
                                      "n_defective": int(td.sum())}
        metrics["regions"] = {"true_region_bad": int(pdf["hits"].sum()),
                              "false_region_good": int((pdf["defects"] - pdf["hits"]).sum()),
                              "false_region_bad": int(pdf["false_regions"].sum())}
        metrics["reconstruction"] = {"method": method, "iou_defect": iou_of(idx_all),
                                     "iou_per_class": {c: (float(inter[k] / union[k]) if union[k] else None)
                                                       for k, c in enumerate(classes)}}
        ci["image_detection.precision"] = _ci(idx_all, lambda idx: detection(pd_[idx], td[idx])[0], boot)
        ci["image_detection.recall"] = _ci(idx_all, lambda idx: detection(pd_[idx], td[idx])[1], boot)
        ci["reconstruction.iou_defect"] = _ci(idx_all, iou_of, boot)
    metrics["ci95"] = {k: v for k, v in ci.items() if v is not None}
    metrics["bootstrap"] = boot
    _plot_confusion(cm, classes, run_dir / "confusion_matrix.png")
    rows = [{"metric": k, "value": v, "ci95_lo": (metrics["ci95"].get(k) or [None])[0],
             "ci95_hi": (metrics["ci95"].get(k) or [None, None])[1]}
            for k, v in metrics.items() if isinstance(v, float)]
    rows += [{"metric": f"{m}[{c}]", "value": v, "ci95_lo": None, "ci95_hi": None}
             for c, vals in metrics["per_class"].items() for m, v in vals.items()]
    with atomic_path(run_dir / "metrics.csv") as tmp:
        pd.DataFrame(rows, columns=["metric", "value", "ci95_lo", "ci95_hi"]).to_csv(tmp, index=False)
    write_json(run_dir / "metrics.json", metrics)
    log.info("metrics: accuracy %.4f, f1_macro %.4f, %s", metrics["accuracy"], metrics["f1_macro"],
             metrics.get("image_detection"))
    return metrics


def report_section(run_dir: Path, max_images: int = 12) -> str:
    """HTML: the overlays of a run (reconstructed defects on the test images)."""
    from bioflow.report import _img
    pics = sorted((run_dir / "overlays").glob("*.png")) if (run_dir / "overlays").is_dir() else []
    if not pics:
        return ""
    return (f"<h2>Reconstructed defects: {html.escape(run_dir.name)}</h2><p>Predicted defect classes tinted, "
            f"true defect outlines in green ({min(len(pics), max_images)} of {len(pics)} test images).</p>"
            f"<div class='figs'>{''.join(_img(p, 300) for p in pics[:max_images])}</div>")
