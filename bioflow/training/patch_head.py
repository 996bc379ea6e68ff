"""Stage ``patch_head`` (patch classification): the scikit-learn head on the cached features,
and the deployment folder.

The head is the classifier named by ``patches.classifier`` (an import path inside
``sklearn``; logistic regression by default) built with ``patches.classifier_kwargs``,
after a ``StandardScaler`` when ``patches.standardize``. ``patches.cross_validation: k``
first scores it by k-fold cross-validation on the training samples, folds grouped by source
image (samples of one image are never on both sides) and stratified by class.

Deployment folder (``deployment/``, swapped in atomically): ``backbone.pt`` (TorchScript),
``head.joblib`` and ``model.json`` (classes and ``class_to_idx``, input size, channels,
normalization with its statistics, patch geometry, the head's import path / kwargs and the
SHA-256 of ``head.joblib``, checked before it is ever unpickled).
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from bioflow import __version__
from bioflow.errors import BioflowError
from bioflow.io import atomic_dir, file_sha256, write_json
from bioflow.models.serialization import dump_joblib

log = logging.getLogger(__name__)


def make_head(p: dict):
    """The (unfitted) head: ``patches.classifier`` with its kwargs, scaled if asked."""
    from sklearn.base import is_classifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    path = str(p["classifier"])
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise BioflowError(f"patches.classifier: cannot import '{path}'; give the import path of a "
                           f"scikit-learn classifier, e.g. sklearn.linear_model.LogisticRegression") from None
    try:
        head = cls(**dict(p["classifier_kwargs"] or {}))
    except TypeError as exc:
        raise BioflowError(f"patches.classifier_kwargs: not accepted by {path} ({exc})") from None
    if not is_classifier(head):
        raise BioflowError(f"patches.classifier: {path} is not a scikit-learn classifier")
    return Pipeline([("scale", StandardScaler()), ("head", head)]) if p["standardize"] else head


def image_of(h5_name: str) -> str:
    """Source image of a training h5 name (``<stem>_good.h5`` / ``<stem>_<k>.h5``)."""
    return Path(h5_name).stem.rpartition("_")[0]


def cross_validate(head, x, y, groups, k: int, seed: int) -> dict:
    from sklearn.base import clone
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedGroupKFold
    if len(set(groups)) < k:
        raise BioflowError(f"patches.cross_validation: {k} folds but only {len(set(groups))} training "
                           f"images; lower it (or 0 = off)")
    acc, f1 = [], []
    for tr, te in StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(x, y, groups):
        m = clone(head).fit(x[tr], y[tr])
        pred = m.predict(x[te])
        acc.append(accuracy_score(y[te], pred))
        f1.append(f1_score(y[te], pred, average="macro", zero_division=0))
    return {"folds": k, "accuracy_mean": float(np.mean(acc)), "accuracy_sd": float(np.std(acc)),
            "f1_macro_mean": float(np.mean(f1)), "f1_macro_sd": float(np.std(f1))}


def run(cfg: dict, run_id, features_path, backbone_path, deployment_dir, summary_path) -> dict:
    import h5py
    from sklearn.metrics import accuracy_score, f1_score

    p = cfg["patches"]
    with h5py.File(features_path, "r") as f:
        attrs = {k: f.attrs[k] for k in f.attrs}
        x, y = f["train/features"][()], f["train/labels"][()]
        groups = [image_of(n.decode() if isinstance(n, bytes) else n) for n in f["train/h5"][()]]
        xv, yv, dv = f["val/features"][()], f["val/labels"][()], f["val/discard"][()]
    classes = json.loads(attrs["classes"])
    if len(set(y.tolist())) < 2:
        raise BioflowError(f"patch_head: the training samples hold one class only "
                           f"({classes[int(y[0])] if len(y) else 'none'}); the head needs two; check "
                           f"patches.class_to_skip_training / include_filter and the masks")
    head = make_head(p)
    summary = {"run_id": run_id, "classifier": p["classifier"], "n_train": int(len(y)),
               "train_counts": {classes[int(k)]: int(v) for k, v in zip(*np.unique(y, return_counts=True))}}
    if int(p["cross_validation"]) > 1:
        summary["cross_validation"] = cross_validate(head, x, y, np.asarray(groups), int(p["cross_validation"]),
                                                     int(run_id or 0))
        log.info("patch_head cross-validation: %s", summary["cross_validation"])
    t0 = time.time()
    head.fit(x, y)
    summary["fit_seconds"] = round(time.time() - t0, 3)
    keep = (yv >= 0) & ~dv
    if keep.any():
        pred = head.predict(xv[keep])
        summary["val_accuracy"] = float(accuracy_score(yv[keep], pred))
        summary["val_f1_macro"] = float(f1_score(yv[keep], pred, average="macro",
                                                 labels=list(range(len(classes))), zero_division=0))
        summary["best_score"] = summary["val_f1_macro"]
        summary["monitor"] = "val_f1_macro"
    with atomic_dir(deployment_dir) as tmp:
        shutil.copy2(backbone_path, tmp / "backbone.pt")
        head_sha256 = dump_joblib(head, tmp / "head.joblib")
        model = {"format": "bioflow-patch-deployment/1", "bioflow_version": __version__,
                 "classes": classes, "class_to_idx": {c: i for i, c in enumerate(classes)},
                 "input_size": [int(v) for v in attrs["input_size"]], "channels": int(attrs["channels"]),
                 "normalization": json.loads(attrs["normalization"]),
                 "geometry": json.loads(attrs["geometry"]), "architecture": str(attrs["architecture"]),
                 "classifier": p["classifier"], "classifier_kwargs": dict(p["classifier_kwargs"] or {}),
                 "standardize": bool(p["standardize"]), "feature_dim": int(x.shape[1]),
                 "head_sha256": head_sha256,
                 "backbone_sha256": file_sha256(tmp / "backbone.pt")}
        write_json(tmp / "model.json", model)
    write_json(summary_path, summary)
    log.info("patch_head: %s", {k: v for k, v in summary.items() if k != "train_counts"})
    return summary
