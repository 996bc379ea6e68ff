#!/usr/bin/env python
"""Thresholds chosen on plain vs TTA validation probabilities, scored on the test set.

For a binary classification experiment that has been trained (e.g. by
``classification_pneumonia.py``), the best checkpoint of one run predicts its validation split
and the test set twice, without and with test-time augmentation (the trained flips / turns,
as ``inference.tta`` does). For each of the four pairings it prints the Youden and F1
thresholds chosen on validation and the test accuracy / balanced accuracy they give, plus the
best accuracy any threshold could reach on the test set (a ceiling for reference only: the
test set chooses nothing in bioflow). The same-run comparison behind ``validation_tta``:
before it, predictions made with TTA were thresholded at the plain record's threshold.

    python benchmarks/threshold_tta_check.py RESULT_ROOT [--run-id 1] [--out FILE.json]

RESULT_ROOT: ``<result_dir>/<name>`` of the experiment (holds prepared/ and checkpoints/).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def probabilities(model, hp, manifest, split, tta, policy):
    """Positive-class probabilities and 0/1 labels of ``split`` (the predict stage's pass)."""
    from bioflow.data.classification import ClassificationDataset
    from bioflow.inference.classification import predict_proba
    entries = manifest["splits"][split]
    ds = ClassificationDataset(manifest, entries, hp["normalization"], hp["cfg"]["data"], None, False,
                               None, None, len(hp["class_names"]))
    loader = torch.utils.data.DataLoader(ds, batch_size=128)
    p = predict_proba(model, loader, torch.device(policy.device), False, tta, policy)[:, 1]
    return p, np.array([int(e["label"]) for e in entries])


def scores(t: float, p: np.ndarray, y: np.ndarray) -> dict:
    pred = (p >= t).astype(int)
    return {"threshold": round(float(t), 4), "test_accuracy": round(float(accuracy_score(y, pred)), 4),
            "test_balanced_accuracy": round(float(balanced_accuracy_score(y, pred)), 4)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--run-id", default="1")
    ap.add_argument("--precision", default="auto", help="inference precision (auto | 32 | bf16)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    from bioflow.data.augment import tta_flags
    from bioflow.data.manifest import for_run, load_manifest
    from bioflow.metrics import thresholds
    from bioflow.models import precision
    from bioflow.models.checkpoint import load_model_from_checkpoint

    torch.set_num_threads(2)
    ckpt = next(a.root.glob(f"checkpoints/*_{a.run_id}-best.ckpt"))
    model, hp = load_model_from_checkpoint(ckpt)
    if len(hp["class_names"]) != 2 or hp.get("multilabel"):
        sys.exit(f"{ckpt}: a binary classifier is needed")
    train_m = load_manifest(a.root / "prepared" / "manifest_train.json")
    train_m = for_run(train_m, a.run_id, train_m.get("cv_folds"))
    test_m = load_manifest(a.root / "prepared" / "manifest_test.json")
    policy = precision.resolve(a.precision, key="--precision")
    passes = {"plain": None, "tta": tta_flags(hp["cfg"]["train"]["augmentation"])}
    probs = {k: {s: probabilities(model, hp, m, s, f, policy) for s, m in (("val", train_m), ("test", test_m))}
             for k, f in passes.items()}
    out = {"checkpoint": str(ckpt), "precision": policy.precision,
           "stored": {k: hp.get(k) for k in ("validation", "validation_tta")}}
    for test_kind in passes:
        pt, yt = probs[test_kind]["test"]
        row = {"test_auc": round(float(roc_auc_score(yt, pt)), 4), "argmax": scores(0.5, pt, yt),
               "best_possible_accuracy": round(max(float(((pt >= c) == yt).mean()) for c in np.unique(pt)), 4)}
        for val_kind in passes:
            pv, yv = probs[val_kind]["val"]
            for m in thresholds.METHODS:
                row[f"{m}_on_{val_kind}_val"] = scores(thresholds.choose(pv, yv == 1, m)[0], pt, yt)
        out[f"test_{test_kind}"] = row
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
