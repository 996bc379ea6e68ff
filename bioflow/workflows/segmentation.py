"""Semantic segmentation: image + integer-mask pairs, 2D (smp U-Net family) and 3D (3D U-Net),
foreground-biased patch sampling, tiled inference, z / yz median post-processing, IoU per
patch, per image and per full image.

Layout: ``<split>/x/<image>`` and ``<split>/y/<mask>`` with the same file names (extensions
may differ); ``test/y`` optional when ``data.test_has_labels`` is false. Masks hold class ids
``0..n_classes-1``, or instance labels turned into classes by ``data.mask_transform``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from bioflow.data import validate
from bioflow.data.masks import TRANSFORM_CLASSES
from bioflow.stage import Job, StageConfig
from bioflow.workflows.base import Workflow, stage

MODEL_KEYS = ("experiment.workflow", "experiment.ndim", "data.channels", "data.patch_size", "model")
TRAIN_KEYS = MODEL_KEYS + ("experiment.split_seed", "data.val_split", "data.cv_folds", "data.normalization",
                           "data.sampling", "data.mask_transform", "train")
RUNTIME_TRAIN_KEYS = ("train.num_workers", "train.n_sample_images", "inference.batch_size")
# predict and the ensemble (the same tiled prediction with the runs' averaged model)
PREDICT_KEYS = ("experiment.ndim", "data.patch_size", "data.test_has_labels", "train.ignore_index", "inference")
# per-image outputs of predict (BiaPy's folders), declared so Snakemake tracks them
PER_IMAGE_DIRS = ("per_image", "per_image_binarized")
FULL_IMAGE_DIRS = ("full_image", "full_image_binarized")


class SemanticSegmentation(Workflow):
    name = "semantic_segmentation"
    has_masks = True
    layout_hint = "a folder with x/ (images) and y/ (masks)"
    memory_keys: ClassVar[dict] = {
        "train": ("train.batch_size", "data.patch_size", "model.features (3D) or model.encoder (2D)"),
        "predict": ("inference.batch_size", "data.patch_size (the tile size)", "inference.memory_budget_mb",
                    "or set inference.full_image: false"),
    }
    extra_keys: ClassVar[dict] = {
        "validate_train": ("data.mask_transform", "data.patch_size"),
        "validate_test": ("data.mask_transform", "data.patch_size"),
    }

    def runs(self, stage_name: str, cfg: dict) -> bool:
        if stage_name == "postprocess":
            p = cfg["postprocess"]
            return self.has_test(cfg) and (p["z_filter"] > 0 or p["yz_filter"] > 0)
        return super().runs(stage_name, cfg)

    def outputs(self, stage_name: str, cfg: dict) -> dict[str, str]:
        labels = cfg["data"]["test_has_labels"]
        if stage_name in ("predict", "ensemble"):
            dirs = PER_IMAGE_DIRS + (FULL_IMAGE_DIRS if cfg["inference"]["full_image"] else ())
            out = {f"{d}_dir": d for d in dirs}
            patches = labels and cfg["inference"]["patch_metrics"] != "off"
            return {**out, "patch_metrics": "patch_metrics.json"} if patches else out
        if stage_name == "metrics" and labels:
            return {"per_image_csv": "metrics_per_image.csv", "overlays_dir": "overlays"}
        return {}

    def check_config(self, cfg: dict) -> list[str]:
        problems = super().check_config(cfg)
        pad = cfg["inference"]["padding"]
        if 2 * pad >= min(cfg["data"]["patch_size"]):
            # caught here, not at inference time after training: tiles keep no core otherwise
            problems.append(f"inference.padding: {pad} leaves no tile core for data.patch_size "
                            f"{cfg['data']['patch_size']}; use a padding below half the smallest patch side")
        if cfg["model"]["n_classes"] < 2:
            problems.append("model.n_classes: segmentation needs at least 2 (background + foreground)")
        return problems

    def report_sections(self, cfg, run_dirs):
        """Per-image foreground IoU, worst first: which test images to look at."""
        import pandas as pd  # not needed for `snakemake -n`
        from bioflow.report import table
        out = []
        for d in run_dirs:
            path = d / "metrics_per_image.csv"
            if not path.is_file():
                continue
            df = pd.read_csv(path)
            cols = [c for c in ("per_image_iou_foreground", "full_image_iou_foreground",
                                "post_processing_iou_foreground") if c in df]
            if not cols:
                continue
            df = df.sort_values(cols[0]).head(20)
            rows = [[r["file"]] + [f"{r[c]:.4f}" for c in cols] for _, r in df.iterrows()]
            out.append(f"<h3>Per image, worst first: {d.name}</h3>" + table(["file"] + cols, rows))
        from bioflow.report import review
        return review.overlays_section(run_dirs) + out

    # --- layout ----------------------------------------------------------------------------

    def min_size(self, cfg):
        return tuple(cfg["data"]["patch_size"])

    def scan(self, ck, cfg, roots, classes):
        need = TRANSFORM_CLASSES.get(ck.mask_transform)
        if need is not None and ck.n_classes != need:
            ck.problem(f"model.n_classes: {ck.n_classes} but data.mask_transform {ck.mask_transform} "
                       f"makes {need} classes; set model.n_classes: {need}")
        splits = {split: validate.scan_pairs(ck, split, root) for split, root in roots.items()}
        return [str(i) for i in range(ck.n_classes)], splits, {}

    # --- stages ----------------------------------------------------------------------------

    @stage(*TRAIN_KEYS, runtime=RUNTIME_TRAIN_KEYS)
    def train(self, cfg: StageConfig, job: Job) -> dict:
        from bioflow.training import segmentation  # torch: kept out of `snakemake -n`
        return segmentation.train(cfg, job.run_id, job.input["manifest"], job.input["norm"],
                                  job.output["ckpt"], job.params["run_dir"])

    @stage(*PREDICT_KEYS, runtime=("train.num_workers",))
    def predict(self, cfg: StageConfig, job: Job) -> Path:
        from bioflow.inference import segmentation  # torch: kept out of `snakemake -n`
        return segmentation.predict(cfg, job.run_id, job.input["ckpt"], job.input["manifest"],
                                    job.params["run_dir"], job.params.get("shard"))

    @stage(*PREDICT_KEYS, runtime=("train.num_workers",))
    def ensemble(self, cfg: StageConfig, job: Job) -> Path:
        """Tiled prediction with the runs' models averaged (mean of their softmax per tile, so
        the blended map is the mean of the runs' probability maps; streaming-safe as predict)."""
        from bioflow.inference import segmentation  # torch: kept out of `snakemake -n`
        return segmentation.predict(cfg, job.run_id, list(job.input["ckpts"]), job.input["manifest"],
                                    job.params["run_dir"])

    @stage("experiment.ndim", "postprocess")
    def postprocess(self, cfg: StageConfig, job: Job):
        from bioflow import postprocess  # scipy / tifffile: kept out of `snakemake -n`
        return postprocess.run(cfg, job.input["per_image"], job.output["post_dir"])

    @stage("experiment.ndim", "model.n_classes", "data.test_has_labels", "train.ignore_index", "metrics")
    def metrics(self, cfg: StageConfig, job: Job) -> dict:
        from bioflow.metrics import segmentation  # matplotlib: kept out of `snakemake -n`
        return segmentation.evaluate(cfg, job.run_id, job.input["manifest"],
                                         Path(job.input["predictions"]).parent)
