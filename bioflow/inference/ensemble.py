"""Stage ``ensemble`` for classification: the runs' test probabilities averaged.

Every run's ``predictions.csv`` holds each test image's probabilities (``prob_<class>``), so
the ensemble needs no forward pass: the mean over the runs of those columns, per image, with
``pred_class`` (and multi-label ``pred_<label>``) recomputed from the mean as predict computes
them from one model's probabilities (argmax; ``inference.binarize_threshold`` for multi-label).
The result is ``results/<name>_ensemble/predictions.csv`` in predict's format, which the metrics
stage evaluates as one more run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bioflow.data.manifest import load_manifest
from bioflow.errors import BioflowError
from bioflow.inference import shards

log = logging.getLogger(__name__)

# per-run bookkeeping columns of predictions.csv that do not describe the ensemble
RUN_COLUMNS = ("precision",)
THRESHOLD_COLUMNS = ("pred_class_thresholded", "pred_thresholded_", "threshold")


def _read(path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise BioflowError(f"{path}: predictions not found; run the predict stage of that run first")
    return pd.read_csv(path, dtype={"file": str, "true_class": str, "pred_class": str}, keep_default_na=False)


def average_probabilities(tables: list[pd.DataFrame], names: list[str], paths=()) -> tuple[pd.DataFrame, np.ndarray]:
    """(the first table aligned on its files, the mean ``(N, C)`` of the ``prob_<class>`` columns
    over ``tables``); every table must list the same files (in any order)."""
    pcols = [f"prob_{c}" for c in names]
    first = tables[0]
    paths = list(paths) or [f"table {i}" for i in range(len(tables))]
    total = np.zeros((len(first), len(names)), dtype=np.float64)
    for df, path in zip(tables, paths):
        missing = [c for c in pcols if c not in df]
        if missing:
            raise BioflowError(f"{path}: columns {missing} missing; rerun predict for this run")
        if sorted(df["file"]) != sorted(first["file"]) or df["file"].duplicated().any():
            raise BioflowError(f"{path}: predicts other test images than {paths[0]}; rerun predict for "
                               f"every run_id on the same test set")
        aligned = df.set_index("file").loc[first["file"], pcols]
        total += aligned.to_numpy(dtype=np.float64)
    return first, total / len(tables)


def average_predictions(cfg: dict, prediction_csvs, manifest_path, run_dir) -> Path:
    """``run_dir/predictions.csv``: the mean probabilities of ``prediction_csvs`` (one per run)."""
    manifest = load_manifest(manifest_path)
    names = list(manifest["classes"])
    multilabel = bool(manifest.get("multilabel") or cfg["model"]["multilabel"])
    paths = [str(p) for p in prediction_csvs]
    first, probs = average_probabilities([_read(p) for p in paths], names, paths)
    # a run's own columns: bookkeeping, and its thresholded decision (its threshold was chosen on
    # that run's validation predictions, not the ensemble's: the ensemble decides by argmax)
    own = [c for c in first if c in RUN_COLUMNS or c.startswith(THRESHOLD_COLUMNS)]
    out = first.drop(columns=own).copy()
    for j, c in enumerate(names):
        out[f"prob_{c}"] = probs[:, j]
    if multilabel:
        pred = probs >= float(cfg["inference"]["binarize_threshold"])
        for j, c in enumerate(names):
            out[f"pred_{c}"] = pred[:, j].astype(int)
        out["pred_class"] = [";".join(n for n, t in zip(names, row) if t) for row in pred]
    else:
        out["pred_class"] = [names[i] for i in probs.argmax(1)]
    out["n_models"] = len(paths)
    dest = Path(run_dir) / "predictions.csv"
    shards.write_csv(out.to_dict("records"), dest, float_format="%.6g")
    log.info("ensemble: %d test images, probabilities averaged over %d runs -> %s", len(out), len(paths), dest)
    return dest
