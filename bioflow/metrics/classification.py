"""Classification metrics (stage ``metrics``): ``sklearn.metrics`` plus bootstrap intervals.

:func:`classification_metrics` / :func:`multilabel_metrics` compute the numbers with
``sklearn.metrics``; :func:`bootstrap_ci` (ours) adds 95% percentile intervals from
``metrics.bootstrap`` resamples of the test set; :func:`evaluate` is the stage:
``predictions.csv`` -> ``metrics.json``, ``metrics.csv``, ``confusion_matrix.png`` and
``mistakes/`` (thumbnails of the most confident mistakes per class, listed in metrics.json) in
the run folder.

Conventions: precision / recall / F1 are macro averages over every class with
``zero_division=0``; balanced accuracy averages recall over the classes present (sklearn);
AUC is the mean one-vs-rest AUC over the classes that have positives and negatives in the
test set (undefined, None, when none has).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global figure state
from sklearn import metrics as skm

from bioflow.data.manifest import load_manifest
from bioflow.errors import BioflowError
from bioflow.io import atomic_path, write_json
from bioflow.metrics import gallery

log = logging.getLogger(__name__)

CI_METRICS = ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "auc")


# --- pure functions ------------------------------------------------------------------------

def binary_auc(y, score) -> float:
    """ROC AUC of scores for a 0/1 target; nan when only one class is present."""
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    return float(skm.roc_auc_score(y, np.asarray(score, dtype=np.float64)))


def per_class_auc(y, probs) -> np.ndarray:
    """One-vs-rest AUC of every class (one sklearn call); nan for a class without positives or
    without negatives."""
    y, probs = np.asarray(y), np.asarray(probs, dtype=np.float64)
    onehot = y[:, None] == np.arange(probs.shape[1])[None]
    ok = onehot.any(0) & ~onehot.all(0)
    out = np.full(probs.shape[1], np.nan)
    if ok.any():
        out[ok] = skm.roc_auc_score(onehot[:, ok], probs[:, ok], average=None)
    return out


def macro_auc(y, probs) -> float:
    """Mean one-vs-rest AUC over the classes present (with positives and negatives); for two
    classes it equals the AUC of class 1. nan when no class qualifies."""
    aucs = per_class_auc(y, probs)
    return float(np.nanmean(aucs)) if not np.isnan(aucs).all() else float("nan")


def _single_label(y, probs, n_classes: int, pred=None) -> dict:
    """The CI metrics plus per-class arrays, with as few sklearn calls as the bootstrap allows;
    ``pred``: the decisions (default: argmax of ``probs``)."""
    pred = probs.argmax(1) if pred is None else pred
    labels = list(range(n_classes))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=0)
    auc = macro_auc(y, probs)
    return {"accuracy": float(skm.accuracy_score(y, pred)),
            "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
            "precision_macro": float(precision.mean()), "recall_macro": float(recall.mean()),
            "f1_macro": float(f1.mean()), "auc": None if math.isnan(auc) else auc,
            "_per_class": (precision, recall, f1, support), "_pred": pred}


def classification_metrics(y, probs, class_names: list[str], pred=None) -> dict:
    """Single-label metrics of integer labels ``y`` and probabilities ``probs`` ``(N, C)``;
    ``pred``: integer decisions when not the argmax (a threshold chosen on validation)."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    out = _single_label(y, probs, len(class_names), None if pred is None else np.asarray(pred, dtype=np.int64))
    precision, recall, f1, support = out.pop("_per_class")
    pred = out.pop("_pred")
    out["confusion_matrix"] = skm.confusion_matrix(y, pred, labels=list(range(len(class_names)))).tolist()
    out["per_class"] = {c: {"precision": float(precision[i]), "recall": float(recall[i]),
                            "f1": float(f1[i]), "support": int(support[i])}
                        for i, c in enumerate(class_names)}
    out["class_names"] = list(class_names)
    out["n_samples"] = int(len(y))
    return out


def multilabel_metrics(y, probs, label_names: list[str], threshold=0.5, pred=None) -> dict:
    """Multi-label metrics of 0/1 targets ``(N, L)`` and sigmoid probabilities ``(N, L)``;
    ``threshold``: one or one per label; ``pred``: 0/1 decisions ``(N, L)`` instead."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    pred = (probs >= np.asarray(threshold)).astype(np.int64) if pred is None else np.asarray(pred, dtype=np.int64)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, pred, average=None, zero_division=0)
    aucs = [binary_auc(y[:, j], probs[:, j]) for j in range(y.shape[1])]
    per = {}
    for j, name in enumerate(label_names):
        a = aucs[j]
        per[name] = {"auc": None if math.isnan(a) else a, "f1": float(f1[j]), "precision": float(precision[j]),
                     "recall": float(recall[j]), "support": int(support[j])}
    aucs = [v["auc"] for v in per.values() if v["auc"] is not None]
    return {"accuracy": float(1.0 - skm.hamming_loss(y, pred)),
            "subset_accuracy": float(skm.accuracy_score(y, pred)),
            "precision_macro": float(precision.mean()), "recall_macro": float(recall.mean()),
            "f1_macro": float(f1.mean()),
            "auc": float(np.mean(aucs)) if aucs else None,
            "per_label": per, "class_names": list(label_names), "n_samples": int(len(y)),
            "multilabel": True}


def bootstrap_ci(y, probs, class_names, n_resamples: int, seed: int = 0, multilabel: bool = False,
                 metrics=CI_METRICS, pred=None) -> dict:
    """95% percentile intervals ``{metric: [lo, hi]}`` over ``n_resamples`` resamples (with
    replacement, seeded) of the test samples; metrics undefined in a resample are skipped.
    ``pred``: the decisions when not the argmax / 0.5 (resampled with the samples)."""
    if n_resamples <= 0 or len(y) == 0:
        return {}
    y, probs = np.asarray(y), np.asarray(probs)
    pred = None if pred is None else np.asarray(pred)
    rng = np.random.default_rng(seed)
    fn = (lambda a, b, d: multilabel_metrics(a, b, class_names, pred=d)) if multilabel else \
        (lambda a, b, d: _single_label(a, b, len(class_names), d))
    values = {m: [] for m in metrics}
    # the inputs were checked once by the caller; sklearn's per-call validation would dominate
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        for _ in range(int(n_resamples)):
            idx = rng.integers(0, len(y), len(y))
            res = fn(y[idx], probs[idx], None if pred is None else pred[idx])
            for m in metrics:
                v = res.get(m)
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    values[m].append(v)
    return {m: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
            for m, v in values.items() if v}


def thresholded_metrics(df: pd.DataFrame, y, probs, names: list[str], multilabel: bool, n_boot: int) -> dict:
    """Metrics of the thresholded decisions of predictions.csv (``inference.threshold``): the
    decisions as predict made them, with their threshold(s) and bootstrap intervals. AUC does not
    depend on the threshold: it stays with the argmax metrics."""
    if multilabel:
        pred = df[[f"pred_thresholded_{c}" for c in names]].astype(int).to_numpy()
        out = multilabel_metrics(y, probs, names, pred=pred)
        out["threshold"] = {c: float(df[f"threshold_{c}"].iloc[0]) for c in names}
        ci = bootstrap_ci(y, probs, names, n_boot, multilabel=True, metrics=("accuracy", "f1_macro"), pred=pred)
    else:
        pred = df["pred_class_thresholded"].map({c: i for i, c in enumerate(names)}).to_numpy()
        out = classification_metrics(y, probs, names, pred=pred)
        out["threshold"] = float(df["threshold"].iloc[0])
        out["positive_class"] = names[1]
        ci = bootstrap_ci(y, probs, names, n_boot, metrics=tuple(m for m in CI_METRICS if m != "auc"), pred=pred)
    for k in ("auc", "class_names", "n_samples", "multilabel"):
        out.pop(k, None)
    out["method"] = str(df["threshold_method"].iloc[0])
    out["ci95"] = ci
    return out


def out_of_fold(csvs, names: list[str], multilabel: bool, n_resamples: int) -> dict:
    """Cross-validation: metrics of the folds' held-out predictions pooled (every train + val
    image scored once, by the fold model that did not train on it; the training stage's
    ``oof_predictions.csv``), with bootstrap 95% CIs."""
    df = pd.concat([pd.read_csv(p, dtype={"true_class": str}, keep_default_na=False) for p in csvs],
                   ignore_index=True)
    probs = df[[f"prob_{c}" for c in names]].to_numpy(dtype=np.float64)
    if multilabel:
        y = df[[f"true_{c}" for c in names]].astype(int).to_numpy()
        out = multilabel_metrics(y, probs, names)
        out["ci95"] = bootstrap_ci(y, probs, names, n_resamples, multilabel=True, metrics=("accuracy", "f1_macro", "auc"))
    else:
        y = df["true_class"].map({c: i for i, c in enumerate(names)}).to_numpy()
        out = classification_metrics(y, probs, names)
        out["ci95"] = bootstrap_ci(y, probs, names, n_resamples)
    out["folds"] = sorted(int(f) for f in df["fold"].unique())
    return out


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
    thr = metrics.get("thresholded") or {}
    for k, v in thr.items():  # the decisions at the threshold chosen on validation
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            lo, hi = thr["ci95"].get(k, [None, None])
            rows.append({"metric": f"thresholded.{k}", "value": v, "ci95_lo": lo, "ci95_hi": hi})
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
    multilabel = bool(manifest.get("multilabel") or cfg["model"]["multilabel"])
    df = pd.read_csv(pred_csv, dtype={"true_class": str, "pred_class": str}, keep_default_na=False)
    n_pred = len(df)
    if multilabel:
        tcols = [f"true_{c}" for c in names]
        have = all(c in df for c in tcols)
        labelled = df[(df[tcols] != "").all(1)] if have else df.iloc[:0]
    else:
        labelled = df[df["true_class"] != ""] if "true_class" in df else df.iloc[:0]
    if not cfg["data"]["test_has_labels"] or labelled.empty:
        out = {"labels_available": False, "n_predictions": int(n_pred), "class_names": names}
        write_json(run_dir / "metrics.json", out)
        return out
    pcols = [f"prob_{c}" for c in names]
    missing = [c for c in pcols if c not in df]
    if missing:
        raise BioflowError(f"{pred_csv}: columns {missing} missing; rerun predict with this manifest")
    probs = labelled[pcols].to_numpy(dtype=np.float64)
    B = int(cfg["metrics"]["bootstrap"])
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
    if "threshold_method" in labelled:  # inference.threshold: the chosen decision beside argmax
        out["thresholded"] = thresholded_metrics(labelled, y, probs, names, multilabel, B)
    # what the model gets wrong, with thumbnails, for the report
    out["mistakes"] = gallery.classification_mistakes(df, labelled, manifest, names, multilabel,
                                                      run_dir / "mistakes")
    out.update({"labels_available": True, "n_predictions": int(n_pred), "run_id": run_id,
                "bootstrap": B})
    write_json(run_dir / "metrics.json", out)
    _write_csv(out, run_dir / "metrics.csv")
    log.info("metrics run %s: accuracy %.4f, auc %s", run_id, out["accuracy"], out["auc"])
    return out
