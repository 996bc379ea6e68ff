"""Benchmark: the 3D template (semseg_3d.yaml) end to end on napari-bio nuclei3d.

Data: /work/shared/data/napari_bio_nuclei3d (nuclei.tif (60, 256, 256) uint16, nuclei_label.tif
instance labels; foreground = label > 0). The volume is cut into regions (z, y, x):
train = [:, :192, :192], val = [:, :192, 192:], test = [:, 192:, :] (60 x 64 x 256, never seen in
training). Trains with the template's defaults (plus the proposed ``PROPOSED`` keys), predicts
the test region tiled, and reports foreground IoU without and with z-filtering
(``postprocess.z_filter: --z-filter``, a post-processing-only key).

    flock /tmp/bioflow_cpu.lock python benchmarks/segmentation_nuclei3d.py
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


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/bioflow_bench/nuclei3d", help="output folder")
    ap.add_argument("--z-filter", type=int, default=5)
    ap.add_argument("--minutes", type=float, default=None, help="override train.max_time_minutes (default: template)")
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
    if a.minutes:
        over["train"] = {"max_time_minutes": a.minutes}
    cfg = deep_update(deep_update(tpl, PROPOSED), over)
    cfg = deep_update(cfg, {"postprocess": {"z_filter": a.z_filter}})
    wf = workflows.validate_config(cfg)
    shutil.rmtree(Layout.of(cfg).root, ignore_errors=True)
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
    res = {"machine": f"{os.cpu_count()} CPU cores (shared), torch threads 2, no GPU",
           "config_overrides_vs_template": {**PROPOSED, **({"train": {"max_time_minutes": a.minutes}} if a.minutes else {})},
           "train_s": round(t_train, 1), "predict_s": round(t_pred, 1), "train_summary": summary,
           "z_filter": a.z_filter,
           "iou_foreground": {lvl: r["iou"][lvl]["foreground"] for lvl in r["iou"]},
           "dice_foreground": {lvl: r["dice"][lvl]["foreground"] for lvl in r["dice"]}}
    (work / "results.json").write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
