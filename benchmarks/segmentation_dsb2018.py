"""Benchmark: 2D semantic segmentation of DSB2018 nuclei with the semseg_2d template defaults.

Data: /work/shared/data/dsb2018_stage1_train (664 pairs). Sorted by name, the last 20% are held
out as test, the rest is train (the template's val_split takes its 10% from it). Foreground =
mask > 0 (``data.mask_transform: foreground``). The 107 RGB images are converted to grey
(ITU-R 601 luminance, ``bioflow.data.segmentation.to_channels``) while the folders are built,
because the config uses ``channels: 1`` and validate_dataset rejects a channel mismatch.

Measured: foreground IoU pooled over every held-out pixel (``iou.per_image.foreground_pooled``)
after 5, 10 and 15 minutes of training (the last checkpoint written before each mark; 15 = the
best checkpoint the pipeline keeps; the template predicts with test-time augmentation, and the
best checkpoint is also scored without it, the previous default), and, in the same run, a
minimal hand-written baseline loop
(smp Unet resnet18, 256^2 random crops, BCE + Dice, batch 8, Adam 1e-3, fp32) trained for
``--baseline-minutes`` and scored on the same pixels with whole-image inference.

    flock /tmp/bioflow_cpu.lock python benchmarks/segmentation_dsb2018.py --minutes 15
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = Path(os.environ.get("BIOFLOW_SHARED_DATA", REPO.parent / "shared" / "data")) / "dsb2018_stage1_train"
# proposed template defaults that the template does not state yet (see RESULTS.md)
PROPOSED = {"train": {"steps_per_epoch": 50, "warmup_epochs": 1}}


def build_folders(work: Path) -> Path:
    import tifffile
    from bioflow.data.segmentation import to_channels
    root = work / "data"
    if (root / "done").exists():
        return root
    names = sorted(p.name for p in (SRC / "images").glob("*.tif"))
    n_test = int(round(0.2 * len(names)))
    split = {n: ("test" if i >= len(names) - n_test else "train") for i, n in enumerate(names)}
    for n, s in split.items():
        for sub in ("x", "y"):
            (root / s / sub).mkdir(parents=True, exist_ok=True)
        img = tifffile.imread(SRC / "images" / n)
        if img.ndim == 3:
            img = to_channels(img, 1)[..., 0]
        tifffile.imwrite(root / s / "x" / n, img)
        os.symlink(SRC / "masks" / n, root / s / "y" / n)
    (root / "done").write_text("ok")
    return root


def make_cfg(work: Path, data: Path, minutes: float, extra: dict | None = None) -> dict:
    from bioflow.config import deep_update
    from bioflow.workflows import validate_config
    tpl = yaml.safe_load((REPO / "config/templates/semseg_2d.yaml").read_text())
    cfg = deep_update(tpl, PROPOSED)
    cfg = deep_update(cfg, {
        "experiment": {"name": "dsb2018", "result_dir": str(work / "results")},
        "data": {"train": str(data / "train"), "test": str(data / "test"), "channels": 1,
                 "mask_transform": "foreground"},
        "model": {"n_classes": 2},
        "train": {"max_time_minutes": minutes}})
    cfg = deep_update(cfg, extra or {})
    validate_config(cfg)
    return cfg


class Snapshots(threading.Thread):
    """Copies last.ckpt each time it changes, named by seconds since training started."""

    def __init__(self, watch: Path, out: Path, t0: float):
        super().__init__(daemon=True)
        self.watch, self.out, self.t0, self.stop = watch, out, t0, threading.Event()
        out.mkdir(parents=True, exist_ok=True)

    def run(self):
        seen = None
        while not self.stop.is_set():
            try:
                m = self.watch.stat().st_mtime
                if m != seen:
                    time.sleep(2)  # let the write finish
                    seen = self.watch.stat().st_mtime
                    shutil.copy(self.watch, self.out / f"t{seen - self.t0:07.1f}.ckpt")
            except FileNotFoundError:
                pass
            self.stop.wait(3)


def score(cfg, ckpt, run_id) -> dict:
    """predict + metrics on their config slices, for ``ckpt`` into run ``run_id``'s folder."""
    from bioflow import workflows
    wf = workflows.get(cfg["experiment"]["workflow"])
    t = time.time()
    job = wf.job("predict", cfg, run_id)
    job.input["ckpt"] = str(ckpt)
    wf.call("predict", cfg, job)
    r = wf.call("metrics", cfg, run_id=run_id)
    return {"iou_pooled_per_image": r["iou"]["per_image"]["foreground_pooled"],
            # the whole-image pass is opt-in (inference.full_image); None when it did not run
            "iou_pooled_full_image": r["iou"].get("full_image", {}).get("foreground_pooled"),
            "iou_mean_per_image": r["iou"]["per_image"]["foreground"],
            "iou_per_patch_mean": r["iou"].get("per_patch", {}).get("foreground"),
            "dice_pooled_per_image": r["dice"]["per_image"]["foreground_pooled"],
            # 95% bootstrap interval, the held-out images resampled (metrics.bootstrap resamples)
            "ci95_iou_pooled_per_image": r.get("ci95", {}).get("iou.per_image.foreground_pooled"),
            "predict_eval_s": round(time.time() - t, 1)}


def baseline(data: Path, minutes: float, seed: int = 0) -> dict:
    """The issue's minimal loop: smp Unet resnet18, 256^2 crops, BCE + Dice, batch 8."""
    import segmentation_models_pytorch as smp
    import tifffile
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    def load(split):
        out = []
        for p in sorted((data / split / "x").glob("*.tif")):
            x = tifffile.imread(p).astype(np.float32)
            x = (x - x.mean()) / (x.std() + 1e-6)
            y = (tifffile.imread(data / split / "y" / p.name) > 0).astype(np.float32)
            out.append((x, y))
        return out

    tr, te = load("train"), load("test")
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    t0, tiles = time.time(), 0
    model.train()
    while time.time() - t0 < minutes * 60:
        xb, yb = [], []
        for _ in range(8):
            x, y = tr[rng.integers(len(tr))]
            ph, pw = max(0, 256 - x.shape[0]), max(0, 256 - x.shape[1])
            if ph or pw:
                x, y = np.pad(x, ((0, ph), (0, pw)), mode="reflect"), np.pad(y, ((0, ph), (0, pw)), mode="reflect")
            i, j = rng.integers(x.shape[0] - 255), rng.integers(x.shape[1] - 255)
            xb.append(x[i:i + 256, j:j + 256]); yb.append(y[i:i + 256, j:j + 256])
        xt, yt = torch.from_numpy(np.stack(xb))[:, None], torch.from_numpy(np.stack(yb))[:, None]
        logit = model(xt)
        p = torch.sigmoid(logit)
        dice = 1 - (2 * (p * yt).sum() + 1) / (p.sum() + yt.sum() + 1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, yt) + dice
        opt.zero_grad(); loss.backward(); opt.step()
        tiles += 8
    train_s = time.time() - t0
    model.eval()
    tp = fp = fn = 0
    with torch.inference_mode():
        for x, y in te:
            h, w = x.shape
            xp = np.pad(x, ((0, (-h) % 32), (0, (-w) % 32)), mode="reflect")
            pr = (model(torch.from_numpy(xp)[None, None])[0, 0, :h, :w] > 0).numpy()
            g = y > 0
            tp += int((pr & g).sum()); fp += int((pr & ~g).sum()); fn += int((~pr & g).sum())
    return {"minutes": minutes, "train_s": round(train_s, 1), "tiles": tiles,
            "tiles_per_s": round(tiles / train_s, 2), "iou_pooled": tp / (tp + fp + fn)}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--marks", default="5,10")
    ap.add_argument("--baseline-minutes", type=float, default=5)
    ap.add_argument("--work", default="/tmp/bioflow_bench/dsb2018", help="output folder")
    ap.add_argument("--out", default=None, help="JSON with the results (default: <work>/results.json)")
    ap.add_argument("--score-only", action="store_true",
                    help="skip training: score the snapshots and best checkpoint a previous run left in --work")
    ap.add_argument("--set", action="append", default=[],
                    help="extra override section.key=yaml_value (exploration only; a reported result "
                         "uses the template values)")
    a = ap.parse_args(argv)
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(2)
    from bioflow import workflows
    from bioflow.layout import Layout

    work = Path(a.work)
    data = build_folders(work)
    from perf_common import set_overrides
    cfg = make_cfg(work, data, a.minutes, set_overrides(a.set))
    wf = workflows.get(cfg["experiment"]["workflow"])
    root = Path(Layout.of(cfg).root)
    ckpt = root / "checkpoints" / "dsb2018_1-best.ckpt"
    if a.score_only:
        summary = json.loads(next(root.glob("results/dsb2018_1/train_summary.json")).read_text())
        train_wall = summary.get("wall_time_s")
    else:
        shutil.rmtree(root, ignore_errors=True)
        for stage in ("validate_train", "validate_test", "norm_stats"):
            wf.call(stage, cfg)
        t0 = time.time()
        shutil.rmtree(work / "snapshots", ignore_errors=True)
        snap = Snapshots(root / "checkpoints" / "dsb2018_1" / "last.ckpt", work / "snapshots", t0)
        snap.start()
        summary = wf.call("train", cfg, run_id=1)
        snap.stop.set(); snap.join()
        train_wall = time.time() - t0
    res = {"machine": f"{os.cpu_count()} CPU cores (shared), torch threads 2, no GPU",
           "config_overrides_vs_template": PROPOSED, "extra_overrides": a.set, "train_summary": summary,
           "train_wall_s_incl_data_loading": round(train_wall, 1), "marks": {}}
    snaps = sorted((float(p.stem[1:]), p) for p in (work / "snapshots").glob("t*.ckpt"))
    for mark in [float(m) for m in a.marks.split(",") if m]:
        before = [(t, p) for t, p in snaps if t <= mark * 60]
        if not before:
            res["marks"][f"{mark:g}min"] = None
            continue
        t, p = before[-1]
        r = score(cfg, p, 1000 + int(mark))  # run folder dsb2018_10<mark>
        res["marks"][f"{mark:g}min"] = {"checkpoint_at_s": t, **r}
    res["marks"][f"{a.minutes:g}min_best"] = {"checkpoint_at_s": train_wall, **score(cfg, ckpt, 1)}
    if cfg["inference"]["tta"]:
        # same-run baseline: the same weights under the previous default (no test-time augmentation)
        from bioflow.config import deep_update
        no_tta = deep_update(cfg, {"inference": {"tta": False}})
        res["marks"][f"{a.minutes:g}min_best_no_tta"] = {"checkpoint_at_s": train_wall, **score(no_tta, ckpt, 2)}
    if a.baseline_minutes > 0:
        res["baseline"] = baseline(data, a.baseline_minutes)
    out = Path(a.out) if a.out else work / "results.json"
    out.write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
