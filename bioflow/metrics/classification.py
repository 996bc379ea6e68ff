"""Classification metrics (stage ``metrics``) as pure functions of labels and probabilities.

:func:`classification_metrics` / :func:`multilabel_metrics` compute the numbers;
:func:`bootstrap_ci` adds 95% percentile intervals from ``metrics.bootstrap`` resamples of the
test set; :func:`evaluate` is the stage: ``predictions.csv`` -> ``metrics.json``,
``metrics.csv`` and ``confusion_matrix.png`` in the run folder.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global figure state
from scipy.stats import rankdata

from bioflow.data.manifest import load_manifest
from bioflow.errors import BioflowError
from bioflow.io import atomic_path, write_json

log = logging.getLogger(__name__)

CI_METRICS = ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "auc")


# --- pure functions ------------------------------------------------------------------------

def binary_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of scores for a 0/1 target (Mann-Whitney U with tie-averaged ranks); nan when
    only one class is present."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(np.asarray(score, dtype=np.float64))
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the classes present (with positives and negatives); for two
    classes it equals the AUC of class 1. nan when no class qualifies."""
    y = np.asarray(y)
    probs = np.asarray(probs)
    aucs = [binary_auc(y == c, probs[:, c]) for c in range(probs.shape[1])]
    aucs = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    return np.bincount(np.asarray(y) * n_classes + np.asarray(pred), minlength=n_classes ** 2
                       ).reshape(n_classes, n_classes)


def _from_confusion(cm: np.ndarray) -> dict:
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0
    return {"accuracy": float(tp.sum() / max(cm.sum(), 1)),
            # balanced accuracy = mean recall over the classes present (as sklearn)
            "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
            # macro averages over all classes, zero_division=0 (as sklearn's defaults do)
            "precision_macro": float(precision.mean()), "recall_macro": float(recall.mean()),
            "f1_macro": float(f1.mean()),
            "_per_class": (precision, recall, f1, support)}


def classification_metrics(y: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """Single-label metrics of integer labels ``y`` and probabilities ``probs`` ``(N, C)``."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n = len(class_names)
    pred = probs.argmax(1)
    cm = confusion(y, pred, n)
    out = _from_confusion(cm)
    precision, recall, f1, support = out.pop("_per_class")
    auc = macro_auc(y, probs)
    out["auc"] = None if math.isnan(auc) else auc
    out["confusion_matrix"] = cm.tolist()
    out["per_class"] = {c: {"precision": float(precision[i]), "recall": float(recall[i]),
                            "f1": float(f1[i]), "support": int(support[i])}
                        for i, c in enumerate(class_names)}
    out["class_names"] = list(class_names)
    out["n_samples"] = int(len(y))
    return out


def multilabel_metrics(y: np.ndarray, probs: np.ndarray, label_names: list[str], threshold: float = 0.5) -> dict:
    """Multi-label metrics of 0/1 targets ``(N, L)`` and sigmoid probabilities ``(N, L)``."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    pred = (probs >= threshold).astype(np.int64)
    per = {}
    for j, name in enumerate(label_names):
        cm = confusion(y[:, j], pred[:, j], 2)
        tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        a = binary_auc(y[:, j], probs[:, j])
        per[name] = {"auc": None if math.isnan(a) else a, "f1": float(f), "precision": float(p),
                     "recall": float(r), "support": int(y[:, j].sum())}
    aucs = [v["auc"] for v in per.values() if v["auc"] is not None]
    return {"accuracy": float((pred == y).mean()), "subset_accuracy": float((pred == y).all(1).mean()),
            "precision_macro": float(np.mean([v["precision"] for v in per.values()])),
            "recall_macro": float(np.mean([v["recall"] for v in per.values()])),
            "f1_macro": float(np.mean([v["f1"] for v in per.values()])),
            "auc": float(np.mean(aucs)) if aucs else None,
            "per_label": per, "class_names": list(label_names), "n_samples": int(len(y)),
            "multilabel": True}


def bootstrap_ci(y, probs, class_names, n_resamples: int, seed: int = 0, multilabel: bool = False,
                 metrics=CI_METRICS) -> dict:
    """95% percentile intervals ``{metric: [lo, hi]}`` over ``n_resamples`` resamples (with
    replacement, seeded) of the test samples; metrics undefined in a resample are skipped."""
    if n_resamples <= 0 or len(y) == 0:
        return {}
    y, probs = np.asarray(y), np.asarray(probs)
    rng = np.random.default_rng(seed)
    fn = (lambda a, b: multilabel_metrics(a, b, class_names)) if multilabel else \
        (lambda a, b: classification_metrics(a, b, class_names))
    values = {m: [] for m in metrics}
    for _ in range(int(n_resamples)):
        idx = rng.integers(0, len(y), len(y))
        res = fn(y[idx], probs[idx])
        for m in metrics:
            v = res.get(m)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                values[m].append(v)
    return {m: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
            for m, v in values.items() if v}


# --- the stage -------------------------------------------------------------------------------

def _plot_confusion(cm, names, path: Path) -> None:
    cm = np.asarray(cm)
    n = len(names)
    fig = Figure(figsize=(1.2 + 0.6 * n, 1.0 + 0.6 * n))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=8)
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")


def _write_csv(metrics: dict, path: Path) -> None:
    rows = []
    ci = metrics.get("ci95", {})
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) or v is None and k == "auc":
            lo, hi = ci.get(k, [None, None])
            rows.append({"metric": k, "value": v, "ci95_lo": lo, "ci95_hi": hi})
    for group in ("per_class", "per_label"):
        for name, vals in (metrics.get(group) or {}).items():
            for k, v in vals.items():
                rows.append({"metric": f"{k}[{name}]", "value": v, "ci95_lo": None, "ci95_hi": None})
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=["metric", "value", "ci95_lo", "ci95_hi"]).to_csv(tmp, index=False)


def evaluate(cfg: dict, run_id, manifest_path, run_dir) -> dict:
    """Stage metrics: ``run_dir/predictions.csv`` -> ``metrics.json`` (+ csv, confusion PNG).

    Without test labels (``data.test_has_labels: false`` or no true class in the predictions)
    it writes ``{"labels_available": false, "n_predictions": N}``.
    """

    run_dir = Path(run_dir)
    pred_csv = run_dir / "predictions.csv"
    if not pred_csv.is_file():
        raise BioflowError(f"{pred_csv}: predictions not found; run the predict stage first")
    manifest = load_manifest(manifest_path)
    names = list(manifest["classes"])
    multilabel = bool(manifest.get("multilabel") or cfg["model"].get("multilabel"))
    df = pd.read_csv(pred_csv, dtype={"true_class": str, "pred_class": str}, keep_default_na=False)
    n_pred = len(df)
    if multilabel:
        tcols = [f"true_{c}" for c in names]
        have = all(c in df for c in tcols)
        labelled = df[(df[tcols] != "").all(1)] if have else df.iloc[:0]
    else:
        labelled = df[df["true_class"] != ""] if "true_class" in df else df.iloc[:0]
    if not cfg["data"].get("test_has_labels", True) or labelled.empty:
        out = {"labels_available": False, "n_predictions": int(n_pred), "class_names": names}
        write_json(run_dir / "metrics.json", out)
        return out
    pcols = [f"prob_{c}" for c in names]
    missing = [c for c in pcols if c not in df]
    if missing:
        raise BioflowError(f"{pred_csv}: columns {missing} missing; rerun predict with this manifest")
    probs = labelled[pcols].to_numpy(dtype=np.float64)
    B = int(cfg.get("metrics", {}).get("bootstrap", 1000))
    if multilabel:
        y = labelled[tcols].astype(int).to_numpy()
        out = multilabel_metrics(y, probs, names)
        out["ci95"] = bootstrap_ci(y, probs, names, B, multilabel=True,
                                   metrics=("accuracy", "f1_macro", "auc"))
    else:
        unknown = sorted(set(labelled["true_class"]) - set(names))
        if unknown:
            raise BioflowError(f"{pred_csv}: true classes {unknown} are not among {names}")
        y = labelled["true_class"].map({c: i for i, c in enumerate(names)}).to_numpy()
        out = classification_metrics(y, probs, names)
        out["ci95"] = bootstrap_ci(y, probs, names, B)
        _plot_confusion(out["confusion_matrix"], names, run_dir / "confusion_matrix.png")
    out.update({"labels_available": True, "n_predictions": int(n_pred), "run_id": run_id,
                "bootstrap": B})
    write_json(run_dir / "metrics.json", out)
    _write_csv(out, run_dir / "metrics.csv")
    log.info("metrics run %s: accuracy %.4f, auc %s", run_id, out["accuracy"], out["auc"])
    return out
