"""Stage ``train`` for the classification workflow (2D and 3D, single- or multi-label).

Builds the datamodule from the manifest, the model from the registry, the loss (CE with
optional class weights / focal; BCE for multi-label) and hands everything to the shared
trainer :func:`bioflow.training.engine.fit`. The best checkpoint is chosen on validation AUC
by default (``train.monitor`` overrides; ``*loss`` metrics are minimised, others maximised).
"""

from __future__ import annotations

import copy
import logging
import warnings

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import (multiclass_accuracy, multiclass_auroc, multiclass_recall,
                                                    multilabel_auroc, multilabel_f1_score)

from bioflow import __version__
from bioflow.data.augment import tta_flags
from bioflow.data.classification import ClassificationDataModule
from bioflow.data.manifest import fold_info, for_run, load_manifest
from bioflow.data.normalization import load_stats
from bioflow.errors import BioflowError
from bioflow.metrics import thresholds
from bioflow.io import atomic_path
from bioflow.layout import OOF_PREDICTIONS
from bioflow.models import build_model
from bioflow.models.checkpoint import load_model_from_checkpoint
from bioflow.training.engine import BioflowModule, fit, seed_run
from bioflow.training.losses import build_loss, resolve_class_weights

log = logging.getLogger(__name__)

DEFAULT_MONITOR = "val_auc"


def checkpoint_cfg(cfg: dict) -> dict:
    """The config sections stored in the checkpoint (what inference rebuilds from)."""
    return {k: copy.deepcopy(cfg[k]) for k in ("experiment", "data", "model", "train")}


def resolve_loss_and_weights(cfg: dict, counts: list[int], multilabel: bool, n_train: int):
    """(train cfg for build_loss, class weights or None); ``counts``: train images per class
    (multi-label: positives per label) out of ``n_train``."""
    tc = dict(cfg["train"])
    if multilabel:
        if tc["loss"] not in ("ce", "bce"):
            raise BioflowError(f"train.loss: '{tc['loss']}' is not for multi-label models; use bce")
        tc["loss"] = "bce"
        cw = tc["class_weights"]
        if cw == "auto":  # positive weight per label = negatives / positives
            return tc, _pos_weights(counts, n_train)
        return tc, None if cw is None else [float(v) for v in cw]
    if tc["loss"] not in ("ce", "focal"):
        raise BioflowError(f"train.loss: '{tc['loss']}' is for segmentation; use ce or focal "
                           f"(bce for multi-label)")
    return tc, resolve_class_weights(tc, counts)


def metric_functions(multilabel: bool) -> dict:
    """Epoch-level validation metrics for the trainer: ``{name: fn(logits, target) -> float}``,
    from torchmetrics, averaged as the metrics stage averages (``bioflow.metrics.classification``):
    AUC over the classes with positives and negatives in the val set (0.5, neutral, when none
    has), balanced accuracy over the classes present."""
    if multilabel:
        def auc(logits, target):
            target = target.long()
            per = _quiet(multilabel_auroc, torch.sigmoid(logits), target, target.shape[1], average="none")
            ok = (target.sum(0) > 0) & (target.sum(0) < len(target))
            return float(per[ok].mean()) if ok.any() else 0.5

        def f1(logits, target):
            return float(multilabel_f1_score(torch.sigmoid(logits), target.long(), target.shape[1],
                                             threshold=0.5, average="macro", zero_division=0))
        return {"auc": auc, "f1": f1}

    def acc(logits, target):
        return float(multiclass_accuracy(logits, target, logits.shape[1], average="micro"))

    def auc(logits, target):
        n = logits.shape[1]
        per = _quiet(multiclass_auroc, torch.softmax(logits, 1), target, n, average="none")
        support = torch.bincount(target, minlength=n)
        ok = (support > 0) & (support < len(target))
        return float(per[ok].mean()) if ok.any() else 0.5  # undefined (one class): neutral, not nan

    def bal_acc(logits, target):
        n = logits.shape[1]
        recall = multiclass_recall(logits, target, n, average="none")
        return float(recall[torch.bincount(target, minlength=n) > 0].mean())
    return {"acc": acc, "auc": auc, "bal_acc": bal_acc}


def val_record(multilabel: bool):
    """The trainer's ``val_record``: decision thresholds chosen on an epoch's validation
    probabilities (binary and multi-label; see bioflow.metrics.thresholds)."""
    def record(logits, target):
        probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)
        return thresholds.validation_record(probs.numpy(), target.numpy(), multilabel)
    return record


def _quiet(fn, *args, **kwargs):
    # torchmetrics warns about classes without positives; those are left out of the mean above
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


def _pos_weights(counts, total: int) -> list[float]:
    return [float((total - c) / c) if c > 0 else 1.0 for c in counts]


def train(cfg: dict, run_id, manifest_path, norm_path, ckpt_path, run_dir) -> dict:
    manifest = for_run(load_manifest(manifest_path), run_id, cfg["data"]["cv_folds"], manifest_path)
    stats = load_stats(norm_path)
    multilabel = bool(cfg["model"]["multilabel"] or manifest.get("multilabel"))
    classes = list(manifest["classes"])
    if len(classes) != int(cfg["model"]["n_classes"]):
        raise BioflowError(f"model.n_classes: {cfg['model']['n_classes']} but the data has "
                           f"{len(classes)} classes ({', '.join(classes)}); set model.n_classes: {len(classes)}")
    if not manifest["splits"]["train"]:
        raise BioflowError(f"{manifest_path}: no training images; check data.train")
    if not manifest["splits"]["val"]:
        raise BioflowError(f"{manifest_path}: no validation images; set data.val or a larger data.val_split")
    seed = seed_run(run_id)  # before building the model: initial weights depend on run_id

    dm = ClassificationDataModule(manifest, stats, cfg["data"], cfg["train"], multilabel,
                                  inference_batch=cfg["inference"]["batch_size"])
    counts = dm.class_counts()
    tc, cw = resolve_loss_and_weights(cfg, counts, multilabel, len(dm.train_dataset))
    loss = build_loss(tc, len(classes), cw)
    model = build_model(cfg, n_metadata=dm.n_metadata)

    monitor = cfg["train"]["monitor"] or DEFAULT_MONITOR
    if not monitor.startswith("val_"):
        monitor = f"val_{monitor}"
    val_labels = {str(e.get("label")) for e in manifest["splits"]["val"]}
    if monitor == "val_auc" and not multilabel and len(val_labels) < 2:
        log.warning("validation set holds one class only: AUC is undefined, monitoring val_loss")
        monitor = "val_loss"
    mode = "min" if monitor.endswith("loss") else "max"
    hparams = {
        "cfg": checkpoint_cfg(cfg), "workflow": "classification", "class_names": classes,
        "multilabel": multilabel, "ndim": manifest["ndim"], "channels": manifest["channels"],
        "n_metadata": dm.n_metadata, "metadata_columns": manifest.get("metadata_columns"),
        "metadata_mean": dm.metadata[0] if dm.metadata else None,
        "metadata_std": dm.metadata[1] if dm.metadata else None,
        "model_extra": {"n_metadata": dm.n_metadata}, "class_counts": counts, "normalization": stats,
        "class_weights": cw, "seed": seed, "bioflow_version": __version__,
    }
    module = BioflowModule(model, loss, cfg["train"], metric_functions(multilabel), hparams,
                           val_record=val_record(multilabel))
    log.info("train run %s: %d train / %d val images, classes %s, counts %s, class weights %s, "
             "monitor %s", run_id, len(dm.train_dataset), len(dm.val_dataset), classes, counts,
             None if cw is None else np.round(cw, 3).tolist(), monitor)
    summary = fit(cfg, run_id, module, dm, ckpt_path, run_dir, monitor=monitor, mode=mode,
                  manifest_path=manifest_path, summary_extra=fold_info(manifest),
                  finalize=tta_validation(module, dm, multilabel, len(classes)))
    if manifest.get("fold"):
        # cross-validation: the fold model's probabilities on its held-out fold (the report pools them)
        write_out_of_fold(ckpt_path, dm, classes, multilabel, Path(run_dir) / OOF_PREDICTIONS)
    return summary


def tta_validation(module: BioflowModule, dm: ClassificationDataModule, multilabel: bool, n_classes: int):
    """:func:`~bioflow.training.engine.fit`'s ``finalize``: ``validation_tta``, the validation
    record (:func:`bioflow.metrics.thresholds.validation_record`) of the best checkpoint's
    probabilities averaged over the test-time augmentation of ``inference.tta``.

    TTA probabilities are means over the transforms, distributed unlike one pass's, so a
    threshold for them is chosen on their kind (PneumoniaMNIST, two models: Youden 0.424 on
    plain vs 0.542 on TTA validation probabilities, and 0.389 vs 0.323; benchmarks/RESULTS.md).
    Prediction takes this record when ``inference.tta`` is on. None (nothing to store) for
    multi-class models and for models trained without flips or rotations (TTA is then the plain
    pass). The pass runs in the precision the trainer used (``module.policy``), as the plain
    record did."""
    flags = tta_flags(module.train_cfg["augmentation"])
    if not (multilabel or n_classes == 2) or not (flags["flips"] or flags["rot90"]):
        return None

    def finalize(best: Path) -> dict:
        from bioflow.inference.classification import predict_proba  # the predict stage's TTA pass

        model, _ = load_model_from_checkpoint(best)
        policy = module.policy
        probs = predict_proba(model, dm.val_dataloader(), torch.device(policy.device), multilabel, flags, policy)
        target = np.array([e["label"] for e in dm.val_dataset.entries])
        rec = thresholds.validation_record(probs, target, multilabel)
        return {} if rec is None else {"validation_tta": rec}
    return finalize


def write_out_of_fold(ckpt_path, dm: ClassificationDataModule, classes: list[str], multilabel: bool, out) -> Path:
    """``out``: file, fold, true labels and ``prob_<class>`` of the held-out fold's images, by the
    best checkpoint (fp32, no TTA)."""
    from bioflow.inference.classification import predict_proba  # the one batched forward pass

    model, _ = load_model_from_checkpoint(ckpt_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    probs = predict_proba(model, dm.val_dataloader(), device, multilabel)
    rows = []
    for e, p in zip(dm.val_dataset.entries, probs):
        label = e.get("label")
        row = {"file": e["path"], "fold": e["fold"]}
        if multilabel:
            row.update({f"true_{c}": int(label[j]) for j, c in enumerate(classes)})
        else:
            row["true_class"] = classes[int(label)]
        row.update({f"prob_{c}": float(p[j]) for j, c in enumerate(classes)})
        rows.append(row)
    with atomic_path(out) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.6g")
    return Path(out)
