"""Stage ``train`` for semantic segmentation (2D and 3D) on the shared engine.

Images and masks are decoded and normalised once into memory; each epoch draws random
(foreground-biased) patches, ``train.steps_per_epoch`` batches of them when set, else
``data.sampling.patches_per_image`` per image. Validation runs on a grid of non-overlapping
patches of the val images; its metric, ``val_iou`` (foreground IoU, pooled over every val
pixel), picks the best checkpoint unless ``train.monitor`` says otherwise.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from torchmetrics.functional.classification import multiclass_confusion_matrix

from bioflow.data.manifest import fold_info, for_run, load_manifest
from bioflow.data.normalization import load_stats
from bioflow.data.segmentation import (SegmentationDataModule, load_samples, save_probability_maps,
                                       save_sample_figures)
from bioflow.errors import BioflowError
from bioflow.metrics.segmentation import class_mean, counts_from_confusion, dice_from_counts, iou_from_counts
from bioflow.models import build_model
from bioflow.models.segmentation import size_divisor
from bioflow.training.engine import BioflowModule, CONFIG_SECTIONS, fit, seed_run, unpack_batch
from bioflow.training.losses import build_loss, resolve_class_weights

log = logging.getLogger(__name__)


class SegmentationModule(BioflowModule):
    """The shared module with validation metrics from a confusion matrix summed over the epoch
    (torchmetrics; no logits kept), scored by the metrics stage's own IoU / Dice definition."""

    def __init__(self, model, loss_fn, train_cfg, n_classes: int, hparams=None, ignore_index=None):
        super().__init__(model, loss_fn, train_cfg, {}, hparams, epoch_metrics=False)
        self.n_classes = int(n_classes)
        self.ignore_index = ignore_index
        self._cm = None

    def validation_step(self, batch, batch_idx):
        x, y, _ = unpack_batch(batch)
        logits = self(x)
        loss = self.loss_fn(logits, y)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=x.shape[0],
                 sync_dist=True)
        cm = multiclass_confusion_matrix(logits.argmax(1), y, self.n_classes, ignore_index=self.ignore_index,
                                         validate_args=False)
        self._cm = cm if self._cm is None else self._cm + cm
        return loss

    def on_validation_epoch_end(self):
        if self._cm is None:
            return
        cm, self._cm = self._cm, None
        if self.trainer.world_size > 1:
            cm = self.all_gather(cm).sum(0)
        for name, value in val_scores(cm.cpu().numpy(), self.n_classes).items():
            self.log(name, value, prog_bar=name == "val_iou")


def val_scores(cm: np.ndarray, n_classes: int) -> dict[str, float]:
    """``val_iou`` / ``val_dice`` (foreground, pooled over the val pixels) and ``val_miou`` (mean
    over classes, a class absent from prediction and truth left out) from a confusion matrix.

    An undefined score (no foreground in masks nor prediction) is logged as 0 so checkpointing
    and early stopping keep a number to compare."""
    counts = counts_from_confusion(cm)
    iou, dice = iou_from_counts(counts), dice_from_counts(counts)
    out = {"val_iou": iou[n_classes], "val_dice": dice[n_classes], "val_miou": class_mean(iou, n_classes)}
    return {k: 0.0 if np.isnan(v) else float(v) for k, v in out.items()}


def class_counts(samples, n_classes: int) -> np.ndarray:
    counts = np.zeros(n_classes, dtype=np.int64)
    for s in samples:
        counts += np.bincount(s.mask.ravel().astype(np.int64).clip(0, n_classes - 1), minlength=n_classes)[:n_classes]
    return counts


def check_patch(cfg: dict, model) -> None:
    div = size_divisor(model)
    patch = cfg["data"]["patch_size"]
    if any(int(p) % div for p in patch):
        raise BioflowError(f"data.patch_size: {patch} must be multiples of {div} for "
                           f"model.architecture '{cfg['model']['architecture']}'")


def train(cfg: dict, run_id, manifest_path, norm_path, ckpt_path, run_dir) -> dict:
    """Train one run; writes ``ckpt_path`` and ``run_dir/train_summary.json`` (returned)."""
    t0 = time.time()
    run_dir = Path(run_dir)
    tc, d = cfg["train"], cfg["data"]
    n_classes = int(cfg["model"]["n_classes"])
    seed = seed_run(run_id)
    manifest = for_run(load_manifest(manifest_path), run_id, cfg["data"]["cv_folds"], manifest_path)
    stats = load_stats(norm_path) if norm_path and Path(norm_path).is_file() else None
    model = build_model(cfg)
    check_patch(cfg, model)

    patch = d["patch_size"]
    train_s = [s for s in load_samples(manifest, "train", stats, cfg, pad_to=patch) if s.mask is not None]
    val_s = [s for s in load_samples(manifest, "val", stats, cfg, pad_to=patch) if s.mask is not None]
    if not train_s:
        raise BioflowError(f"{manifest_path}: no training image has a mask; check data.train (x/ and y/)")
    log.info("segmentation data: %d train / %d val images loaded in %.1fs", len(train_s), len(val_s),
             time.time() - t0)

    weights = resolve_class_weights(tc, class_counts(train_s, n_classes))
    loss_fn = build_loss(tc, n_classes, weights)
    hparams = {"cfg": {k: cfg[k] for k in CONFIG_SECTIONS}, "model_extra": {},
               "class_names": manifest.get("classes"), "class_weights": weights,
               "normalization": stats}
    module = SegmentationModule(model, loss_fn, tc, n_classes, hparams, tc["ignore_index"])
    dm = SegmentationDataModule(cfg, train_s, val_s, seed)

    sampling = d["sampling"]
    charts = run_dir / "charts"
    save_sample_figures(dm.train_dataset, charts, int(tc["n_sample_images"]), seed)
    if sampling["save_probability_maps"]:
        save_probability_maps(train_s, float(sampling["foreground_bias"]), run_dir / "probability_maps")

    if not val_s:
        log.warning("no validation image with a mask (data.val / data.val_split): the checkpoint is "
                    "chosen on train_loss")
    monitor = tc["monitor"] or ("val_iou" if val_s else "train_loss")
    mode = "min" if "loss" in monitor else "max"
    summary = fit(cfg, run_id, module, dm, ckpt_path, run_dir, monitor=monitor, mode=mode,
                  manifest_path=manifest_path, summary_extra=fold_info(manifest))
    return summary
