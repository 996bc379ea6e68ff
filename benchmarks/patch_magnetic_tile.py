"""Benchmark: patch classification of the Magnetic-tile defect set (Huang et al. 2018) with the
patch_classification workflow, three feature extractors side by side in one run, within a
wall-time budget (``--budget-minutes``, 15 by default: the issue's bar on 2 CPU cores).

Data: ``<data>/magnetic_tile_defects`` (6 class folders of JPG image + PNG mask, mask > 127;
read in place through symlinks, never copied into the repository). A seeded, class-stratified
30% of the images is the test set (``data.test``); the rest is ``data.train``, whose
``patches.val_size`` 20% is the val split. Patches 64 x 64 on a non-overlapping grid,
quadra's thresholds, logistic regression head after a StandardScaler (the template's defaults).

Feature extractors, each with the same head on the same patches:

* ``raw_pixels``: the plain baseline, the patch average-pooled to 8 x 8 (64 values);
* ``random``: resnet18 with random weights (what a user gets with no weights and no internet);
* ``bioflow``: resnet18 trained by bioflow's classification workflow on the patch dataset's
  own class folders (``patches.classification_folders``: patches drawn per dataset.txt line
  with quadra's sampling from the TRAINING images; the val grid patches select the
  checkpoint), class weights inversely proportional to the class counts; its checkpoint is
  given as ``model.weights``.

Budget, in this order: the shared preparation (validation, norm stats, patch dataset with the
class folders), the raw_pixels and random variants (timed), then the backbone training gets
what is left after keeping the random variant's measured time (the bioflow variant does the
same work with the same architecture) plus ``--reserve-seconds`` for the classification
run's own validation / statistics / startup and a margin; then the bioflow variant.

Measured on the test images: per-image defect detection precision / recall (an image is
predicted defective when its reconstruction holds any defect pixel), per-class patch F1 and
the pixel IoU of the reconstructed defect area, each with a 95% bootstrap interval (1000
resamples of images, or of patches for F1).

    flock /tmp/bioflow_cpu.lock python benchmarks/patch_magnetic_tile.py --out /tmp/bench_mt
    (--data defaults to ../shared/data relative to the repository)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bioflow import workflows  # noqa: E402
from bioflow.config import validate as validate_config  # noqa: E402

VARIANTS = ("raw_pixels", "random", "bioflow")
DRAWS_PER_LINE = 16  # patches.classification_folders: ~11k training patches for the backbone


def split_folders(src: Path, out: Path, test_frac: float = 0.3, seed: int = 0) -> Path:
    """data/{train,test}/<class>/<name>.jpg + .png as symlinks, a stratified seeded split."""
    root = out / "data"
    if (root / "done").exists():
        return root
    rng = np.random.default_rng(seed)
    for cls_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        jpgs = sorted((cls_dir / "Imgs").glob("*.jpg"))
        test = set(rng.choice(len(jpgs), int(round(test_frac * len(jpgs))), replace=False).tolist())
        for i, j in enumerate(jpgs):
            d = root / ("test" if i in test else "train") / cls_dir.name
            d.mkdir(parents=True, exist_ok=True)
            os.symlink(j, d / j.name)
            os.symlink(j.with_suffix(".png"), d / j.with_suffix(".png").name)
    (root / "done").write_text("ok")
    return root


def base_config(data: Path, out: Path, name: str, draws: int, input_size: int, stages=None) -> dict:
    return {"experiment": {"name": name, "workflow": "patch_classification", "result_dir": str(out / "results"),
                           "run_ids": [1]},
            "data": {"train": str(data / "train"), "test": str(data / "test"), "channels": 1},
            "model": {"architecture": "resnet18", "n_classes": 6},
            "patches": {"patch_size": [64, 64], "val_size": 0.2, "iteration_over_training": 4, "batch_size": 128,
                        "classification_folders": draws, "feature_stages": stages,
                        "input_size": [input_size, input_size]},
            "metrics": {"bootstrap": 1000}}


def backbone_config(out: Path, patches_dir: Path, minutes: float, input_size: int) -> dict:
    """The classification experiment that trains the backbone on the patch dataset's class
    folders (what a user writes: data.train / data.val point into prepared/patches)."""
    cls_root = patches_dir / "classification"
    return {"experiment": {"name": "mt_backbone", "workflow": "classification", "result_dir": str(out / "results"),
                           "run_ids": [1]},
            "data": {"train": str(cls_root / "train"), "val": str(cls_root / "val"), "channels": 1,
                     "patch_size": [input_size, input_size]},
            "model": {"architecture": "resnet18", "n_classes": 6},
            "train": {"epochs": 100, "patience": 10, "batch_size": 64, "lr": 1e-3, "class_weights": "auto",
                      "max_time_minutes": round(minutes, 2), "warmup_epochs": 0, "n_sample_images": 0,
                      # long epochs: validating the ~2900 val patches is costly on 2 cores
                      "steps_per_epoch": 250,
                      # defects keep their class under flips and quarter turns; brightness is a cue
                      # (MT_Uneven), so no brightness / contrast jitter
                      "augmentation": {"flips": True, "rot90": True, "brightness_contrast": False}}}


def backbone_training(out: Path, ccfg: dict) -> Path:
    """resnet18 trained by bioflow's classification workflow (Snakemake, as a user runs it);
    returns its checkpoint."""
    path = out / "backbone.yaml"
    path.write_text(yaml.safe_dump(ccfg, sort_keys=False))
    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(out),
                    "--configfile", str(path), "--cores", str(os.cpu_count() or 1), "-q", "progress"],
                   check=True, cwd=out)
    return out / "results" / "mt_backbone" / "checkpoints" / "mt_backbone_1-best.ckpt"


def run_variant(wf, base: dict, variant: str, ckpt: Path | None) -> dict:
    """patch_features -> patch_head -> predict -> metrics of one feature extractor, on the
    shared patch dataset (validate / norm_stats / patch_dataset ran once for ``base``)."""
    cfg = copy.deepcopy(base)
    cfg["experiment"]["name"] = f"mt_{variant}"
    cfg["model"]["architecture"] = "raw_pixels" if variant == "raw_pixels" else "resnet18"
    cfg["model"]["weights"] = str(ckpt) if variant == "bioflow" else None
    cfg = validate_config(cfg)
    prepared = Path(base["experiment"]["result_dir"]) / base["experiment"]["name"] / "prepared"
    shared = {"info": str(prepared / "patches" / "info.json"), "norm": str(prepared / "normalization.json")}
    timings = {}
    for stage in ("patch_features", "patch_head", "predict", "metrics"):
        job = wf.job(stage, cfg, 1)
        job.input.update({k: v for k, v in shared.items() if k in job.input})
        t0 = time.time()
        wf.call(stage, cfg, job)
        timings[stage] = round(time.time() - t0, 1)
    rd = Path(cfg["experiment"]["result_dir"]) / cfg["experiment"]["name"] / "results" / f"mt_{variant}_1"
    metrics = json.loads((rd / "metrics.json").read_text())
    summary = json.loads((rd / "train_summary.json").read_text())
    return {"metrics": metrics, "train_summary": summary, "seconds": timings, "run_dir": str(rd)}


def fmt(v, ci=None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def table(results: dict, classes: list[str]) -> str:
    rows = ["| metric | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]

    def line(name, get):
        rows.append(f"| {name} | " + " | ".join(get(r["metrics"]) for r in results.values()) + " |")

    line("image detection precision", lambda m: fmt(m["image_detection"]["precision"],
                                                    m["ci95"].get("image_detection.precision")))
    line("image detection recall", lambda m: fmt(m["image_detection"]["recall"],
                                                 m["ci95"].get("image_detection.recall")))
    line("reconstruction IoU (defect pixels)", lambda m: fmt(m["reconstruction"]["iou_defect"],
                                                             m["ci95"].get("reconstruction.iou_defect")))
    line("annotated defects hit / missed, false regions",
         lambda m: "{true_region_bad} / {false_region_good}, {false_region_bad}".format(**m["regions"]))
    line("patch accuracy", lambda m: fmt(m["accuracy"]))
    line("patch F1 macro", lambda m: fmt(m["f1_macro"], m["ci95"].get("f1_macro")))
    for c in classes:
        line(f"patch F1 {c}", lambda m, c=c: fmt(m["per_class"][c]["f1"], m["ci95"].get(f"patch_f1[{c}]")))
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                    help="folder holding magnetic_tile_defects/ (default: ../shared/data from the repository)")
    ap.add_argument("--out", type=Path, required=True, help="output folder (created)")
    ap.add_argument("--budget-minutes", type=float, default=15.0, help="wall time of the whole run")
    ap.add_argument("--reserve-seconds", type=float, default=90.0,
                    help="kept from the backbone's training time for the classification run's validation, "
                         "statistics and startup, and as a margin")
    ap.add_argument("--draws-per-line", type=int, default=DRAWS_PER_LINE,
                    help="patches.classification_folders: backbone training patches per dataset.txt line")
    ap.add_argument("--input-size", type=int, default=32,
                    help="backbone input side (patches.input_size; the 64 x 64 patches are resized)")
    ap.add_argument("--feature-stages", type=int, nargs="+", default=None,
                    help="patches.feature_stages of the resnet18 variants (default: its pooled output)")
    args = ap.parse_args(argv)
    src = args.data / "magnetic_tile_defects"
    if not src.is_dir():
        sys.exit(f"{src}: not found; give --data")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    budget = args.budget_minutes * 60
    data = split_folders(src, out)
    wf = workflows.get("patch_classification")
    base = validate_config(base_config(data, out, "mt_patches", args.draws_per_line, args.input_size, args.feature_stages))
    for stage in ("validate_train", "validate_test", "norm_stats", "patch_dataset"):
        wf.call(stage, base)
    prep_seconds = round(time.time() - t_start, 1)
    patches_dir = out / "results" / "mt_patches" / "prepared" / "patches"
    info = json.loads((patches_dir / "info.json").read_text())
    results = {v: run_variant(wf, base, v, None) for v in ("raw_pixels", "random")}
    # the bioflow variant repeats the random one's work (same architecture, same patches)
    keep = sum(results["random"]["seconds"].values()) + args.reserve_seconds
    minutes = (budget - (time.time() - t_start) - keep) / 60
    if minutes < 1:
        sys.exit(f"only {minutes:.1f} min left for the backbone's training: raise --budget-minutes")
    t0 = time.time()
    ckpt = backbone_training(out, backbone_config(out, patches_dir, minutes, args.input_size))
    backbone_seconds = round(time.time() - t0, 1)
    results["bioflow"] = run_variant(wf, base, "bioflow", ckpt)
    total = round(time.time() - t_start, 1)
    train_summary = json.loads((out / "results" / "mt_backbone" / "results" / "mt_backbone_1"
                                / "train_summary.json").read_text())
    summary = {"classes": info["classes"], "counts": info["counts"], "discarded": info["discarded"],
               "classification_counts": info.get("classification_counts"),
               "n_images": {s: len(info[f"{s}_files"]) for s in ("train", "val", "test")},
               "budget_seconds": budget, "prepare_seconds": prep_seconds,
               "backbone_train_minutes": round(minutes, 2), "backbone_seconds": backbone_seconds,
               "backbone_train_summary": train_summary,
               "total_seconds": total, "within_budget": total <= budget, "results": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=1))
    for v, r in results.items():
        print(v, "seconds:", r["seconds"], "val_f1_macro:", r["train_summary"].get("val_f1_macro"))
    print(table(results, info["classes"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
