#!/usr/bin/env python
"""Does the current code compute what the pre-refactor code computed? AdrenalMNIST3D, bit for bit.

Trains the classification_3d template on AdrenalMNIST3D-64 for ``--epochs`` epochs (early stopping
off) twice, same run_id (seed): once with an older checkout of bioflow (``--old``, e.g. a
``git worktree add /tmp/old effdabd``, run in a subprocess with its own ``bioflow``), once with
this one, with its two deliberate numerical changes switched back:

* 3D training in channels-last-3d (the precision policy): changes convolution kernels and so the
  float rounding, which reseeds the trajectory;
* test-time augmentation over every combination of the trained flips and quarter turns (16 for
  a 3D volume, :func:`bioflow.data.augment.tta_transforms`) instead of identity + single-axis
  flips + quarter turns (7).

Then compares the per-epoch training log (train loss, val loss, val accuracy, val AUC) and the test
predictions. With both switched back they agree to float rounding; then it predicts the same
weights with the current TTA set, which measures that change alone.

    git worktree add /tmp/old effdabd
    python benchmarks/adrenal3d_refactor_check.py --old /tmp/old --out /tmp/refactor_check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from classification_adrenal3d import DATA, OVERRIDES  # noqa: E402
from classification_common import REPO, run_pipeline, template_cfg  # noqa: E402

COLUMNS = ["train_loss", "val_loss", "val_acc", "val_auc"]


def old_tta_transforms(spatial_shape, flips=True, rot90=True):
    """The pre-refactor TTA set: identity, each single-axis flip, quarter turns of square y-x."""
    nd = len(spatial_shape)
    out = [((), 0)] + ([((ax,), 0) for ax in range(nd)] if flips else [])
    if rot90 and spatial_shape[-1] == spatial_shape[-2]:
        out += [((), k) for k in (1, 2, 3)]
    return out


def epoch_table(run_dir: Path) -> pd.DataFrame:
    log = pd.read_csv(run_dir / "train_logs" / "metrics.csv")
    return pd.DataFrame({c: log.dropna(subset=[c]).groupby("epoch")[c].last() for c in COLUMNS})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="checkout of the older bioflow (its repository root)")
    ap.add_argument("--out", type=Path, required=True, help="folder for both runs' outputs")
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    sets = ["--set", f"train.epochs={args.epochs}", "--set", "train.patience=0"]
    env = {**os.environ, "PYTHONPATH": str(args.old.resolve()), "BIOFLOW_SHARED_DATA": str(DATA.parents[1])}
    old_out = args.out / "old"
    subprocess.run([sys.executable, str(args.old / "benchmarks" / "classification_adrenal3d.py"),
                    "--out", str(old_out), *sets], env=env, check=True, cwd=args.old)
    old_res = json.loads((old_out / "adrenal3d_default_result.json").read_text())

    import torch
    torch.set_num_threads(2)
    from bioflow import workflows
    from bioflow.config import deep_update
    from bioflow.data import augment
    from bioflow.models import precision

    resolve = precision.resolve

    def no_channels_last_in_training(requested, device=None, key="precision", channels_last=True, training_3d=False):
        return resolve(requested, device, key, channels_last=channels_last and key != "train.precision",
                       training_3d=training_3d)

    precision.resolve = no_channels_last_in_training
    current_tta = augment.tta_transforms
    augment.tta_transforms = old_tta_transforms
    cfg = template_cfg("classification_3d.yaml", deep_update(OVERRIDES, {
        "experiment": {"result_dir": str(args.out / "new"), "name": "adrenal3d_default"},
        "train": {"epochs": args.epochs, "patience": 0}, "inference": {"precision": "32"}}))
    new_res = run_pipeline(cfg)
    precision.resolve = resolve

    old_run = old_out / "adrenal3d_default" / "results" / "adrenal3d_default_1"
    t_old, t_new = epoch_table(old_run), epoch_table(Path(new_res["run_dir"]))
    diff = (t_old - t_new).abs().max()
    p_old = pd.read_csv(old_run / "predictions.csv").set_index("file")
    p_new = pd.read_csv(Path(new_res["run_dir"]) / "predictions.csv").set_index("file")
    prob_diff = float((p_old["prob_mass"] - p_new.loc[p_old.index, "prob_mass"]).abs().max())

    # the same weights, predicted with the current TTA set
    augment.tta_transforms = current_tta
    wf = workflows.get("classification")
    job = wf.job("predict", cfg, 2)
    job.input["ckpt"] = wf.job("predict", cfg, 1).input["ckpt"]
    wf.call("predict", cfg, job)
    m_tta = wf.call("metrics", cfg, run_id=2)

    report = {
        "epochs": args.epochs,
        "max_abs_difference_per_column": {k: float(v) for k, v in diff.items()},
        "best_epoch": {"old": old_res["summary"]["best_epoch"], "new": new_res["summary"]["best_epoch"]},
        "test_prob_max_abs_difference": prob_diff,
        "test_old": {k: old_res["metrics"][k] for k in ("accuracy", "auc")},
        "test_new_old_tta": {k: new_res["metrics"][k] for k in ("accuracy", "auc")},
        "test_new_current_tta_same_weights": {k: m_tta[k] for k in ("accuracy", "auc")},
    }
    (args.out / "refactor_check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    print("old:", REPO, "vs", args.old)


if __name__ == "__main__":
    main()
