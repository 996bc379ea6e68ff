"""Benchmark: the 3D template (semseg_3d.yaml) end to end on napari-bio nuclei3d.

Data: /work/shared/data/napari_bio_nuclei3d (nuclei.tif (60, 256, 256) uint16, nuclei_label.tif
instance labels; foreground = label > 0). The volume is cut into regions (z, y, x):
train = [:, :192, :192], val = [:, :192, 192:], test = [:, 192:, :] (60 x 64 x 256, never seen in
training). Trains with the template's defaults (plus the proposed ``PROPOSED`` keys), predicts
the test region tiled, and reports foreground IoU without and with z-filtering
(``postprocess.z_filter: --z-filter``, a post-processing-only key).

    flock /tmp/bioflow_cpu.lock python benchmarks/segmentation_nuclei3d.py

A short comparison of settings (not the benchmark): ``--epochs N`` trains exactly N epochs of
``steps_per_epoch`` batches (no time limit), ``--per-image true|false`` overrides
``data.normalization.per_image``; ``results.json`` then holds the val IoU of every epoch and the
test IoU of both the kept (best val) and the last epoch's model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = Path(os.environ.get("BIOFLOW_SHARED_DATA", REPO.parent / "shared" / "data")) / "napari_bio_nuclei3d"
PROPOSED = {"train": {"steps_per_epoch": 50, "warmup_epochs": 1}}
REGIONS = {"train": np.s_[:, :192, :192], "val": np.s_[:, :192, 192:], "test": np.s_[:, 192:, :]}


def build_folders(work: Path) -> Path:
    import tifffile
    root = work / "data"
    img = tifffile.imread(SRC / "nuclei.tif")
    lab = tifffile.imread(SRC / "nuclei_label.tif")
    for split, sl in REGIONS.items():
        for sub, arr in (("x", img), ("y", lab)):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / split / sub / "nuclei.tif", np.ascontiguousarray(arr[sl]))
    return root


def val_curve(metrics_csv: Path) -> list[float]:
    """val_iou of every epoch, from Lightning's CSV log."""
    import pandas as pd
    df = pd.read_csv(metrics_csv)
    df = df.dropna(subset=["val_iou"]).groupby("epoch")["val_iou"].last()
    return [round(float(v), 4) for v in df.to_numpy()]


def last_epoch_iou(cfg, lay, work: Path) -> float:
    """Foreground IoU on the test region of the last epoch's model (tiled, no post-processing):
    whether a later model than the kept one would have scored better."""
    import tifffile
    from bioflow.inference.segmentation import predict
    best = Path(lay.best_ckpt(1))
    last = best.parent / best.name.removesuffix(".ckpt").removesuffix("-best") / "last.ckpt"
    out = work / "last_epoch"
    predict(cfg, 1, last, lay.manifest_test, out)
    pred = tifffile.imread(out / "per_image" / "nuclei.tif") > 0
    gt = tifffile.imread(work / "data" / "test" / "y" / "nuclei.tif") > 0
    return round(float((pred & gt).sum() / (pred | gt).sum()), 4)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/bioflow_bench/nuclei3d", help="output folder")
    ap.add_argument("--z-filter", type=int, default=5)
    ap.add_argument("--minutes", type=float, default=None, help="override train.max_time_minutes (default: template)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="train exactly this many epochs, no time limit (a fixed-step comparison run)")
    ap.add_argument("--per-image", choices=("true", "false"), default=None,
                    help="override data.normalization.per_image (default: template)")
    ap.add_argument("--score-only", action="store_true",
                    help="score the checkpoint a finished run left in --work (same options) without training")
    a = ap.parse_args(argv)
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(2)
    from bioflow import workflows
    from bioflow.config import deep_update
    from bioflow.layout import Layout

    work = Path(a.work)
    data = build_folders(work)
    tpl = yaml.safe_load((REPO / "config/templates/semseg_3d.yaml").read_text())
    over = {"experiment": {"name": "nuclei3d", "result_dir": str(work / "results")},
            "data": {"train": str(data / "train"), "val": str(data / "val"), "test": str(data / "test"),
                     "channels": 1, "mask_transform": "foreground"},
            "model": {"n_classes": 2}}
    changed = {}  # what this run changes besides PROPOSED, recorded with the results
    if a.minutes:
        changed["train"] = {"max_time_minutes": a.minutes}
    if a.epochs:
        changed["train"] = {"epochs": a.epochs, "max_time_minutes": None}
    if a.per_image:
        changed["data"] = {"normalization": {"per_image": a.per_image == "true"}}
    cfg = deep_update(deep_update(deep_update(tpl, PROPOSED), over), changed)
    cfg = deep_update(cfg, {"postprocess": {"z_filter": a.z_filter}})
    wf = workflows.validate_config(cfg)
    lay = Layout.of(cfg)
    if a.score_only:
        summary = json.loads((Path(lay.run_dir(1)) / "train_summary.json").read_text())
        t_train = summary["wall_time_s"]
    else:
        shutil.rmtree(lay.root, ignore_errors=True)
        # every stage on its own config slice, as the Snakemake rules run them
        for stage in ("validate_train", "validate_test", "norm_stats"):
            wf.call(stage, cfg)
        t0 = time.time()
        summary = wf.call("train", cfg, run_id=1)
        t_train = time.time() - t0
    t0 = time.time()
    wf.call("predict", cfg, run_id=1)
    t_pred = time.time() - t0
    if a.z_filter:
        wf.call("postprocess", cfg, run_id=1)
    r = wf.call("metrics", cfg, run_id=1)
    curve = val_curve(Path(lay.run_dir(1)) / "train_logs" / "metrics.csv")
    last = last_epoch_iou(cfg, lay, work) if a.epochs else None
    res = {"machine": f"{os.cpu_count()} CPU cores (shared), torch threads 2, no GPU",
           "config_overrides_vs_template": deep_update(PROPOSED, changed),
           "train_s": round(t_train, 1), "predict_s": round(t_pred, 1), "train_summary": summary,
           "z_filter": a.z_filter, "normalization": cfg["data"]["normalization"],
           "val_iou_per_epoch": curve, "test_iou_last_epoch_tiled": last,
           "iou_foreground": {lvl: r["iou"][lvl]["foreground"] for lvl in r["iou"]},
           "dice_foreground": {lvl: r["dice"][lvl]["foreground"] for lvl in r["dice"]}}
    (work / "results.json").write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
