"""Stage ``predict`` for the classification workflow: checkpoint + test images -> predictions.csv.

The model and its preprocessing come from the checkpoint (its stored config), so only the
checkpoint (which carries the normalization statistics) is needed besides the images. Batched; with
``inference.tta`` the probabilities are averaged over flips and (square y-x) 90-degree
rotations.

``predictions.csv`` columns: ``file`` (relative to the test folder), ``true_class`` (empty
when unknown), ``pred_class`` (argmax), ``prob_<class>``...; multi-label: ``true_class`` /
``pred_class`` hold the ``;``-joined label names, plus ``prob_<label>``, ``pred_<label>`` (0/1)
and ``true_<label>`` (0/1, empty when unknown).

With ``inference.threshold`` other than argmax (binary and multi-label, see
:mod:`bioflow.metrics.thresholds`), the thresholded decision comes beside the argmax one:
``pred_class_thresholded``, ``threshold_method`` and ``threshold`` (binary: on
``prob_<class_names[1]>``); multi-label: ``threshold_<label>`` and ``pred_thresholded_<label>``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from bioflow.data.augment import predict_tta, tta_flags
from bioflow.data.classification import ClassificationDataset
from bioflow.data.loader import device_batches, loader_kwargs
from bioflow.data.manifest import load_manifest
from bioflow.models.fusion import fold_batchnorm
from bioflow import progress
from bioflow.errors import BioflowError
from bioflow.inference import resume, shards
from bioflow.metrics import thresholds
from bioflow.models import precision
from bioflow.models.checkpoint import load_model_from_checkpoint

log = logging.getLogger(__name__)


@torch.inference_mode()
def iter_proba(model, loader, device, multilabel: bool = False, tta: dict | None = None,
               policy: precision.Policy | None = None):
    """Probabilities ``(B, C)`` of each batch of ``loader``, batch by batch (softmax, or sigmoid
    for multi-label); ``tta``: :func:`~bioflow.data.augment.tta_flags` of the training
    augmentation to average over those transforms, None for none; ``policy``: precision and
    memory format (None: fp32)."""
    act = torch.sigmoid if multilabel else (lambda t: torch.softmax(t, 1))
    model = fold_batchnorm(model).to(device)
    if policy is not None:
        policy.prepare_model(model)
    autocast = policy.autocast if policy is not None else contextlib.nullcontext
    prog = progress.Progress("predict", len(loader.dataset), "images")
    for batch in device_batches(loader, device):
        x = batch["image"]
        x = policy.prepare_input(x) if policy is not None else x
        meta = batch.get("meta")

        def probs(t, meta=meta):
            with autocast():
                logits = model(t) if meta is None else model(t, meta)
            return act(logits.float())

        yield predict_tta(probs, x, tta, dense=False).cpu().numpy()
        prog.update(len(x))
    prog.close()


def predict_proba(model, loader, device, multilabel: bool = False, tta: dict | None = None,
                  policy: precision.Policy | None = None) -> np.ndarray:
    """Probabilities ``(N, C)`` for every item of ``loader`` (see :func:`iter_proba`)."""
    out = list(iter_proba(model, loader, device, multilabel, tta, policy))
    return np.concatenate(out) if out else np.zeros((0, 0))


def threshold_record(hp: dict, tta: bool) -> dict | None:
    """The checkpoint's validation record for predictions with (``validation_tta``) or without
    (``validation``) test-time augmentation; a model trained without flips or rotations, or by
    a bioflow older than the TTA record, has the plain one only (its TTA is the plain pass, or
    close to it)."""
    return (tta and hp.get("validation_tta")) or hp.get("validation")


def _display_name(entry: dict, test_root: str | None) -> str:
    p = Path(entry["path"])
    if test_root:
        try:
            return Path(os.path.relpath(p.resolve(), Path(test_root).resolve())).as_posix()
        except ValueError:
            pass
    return p.name


def predict(cfg: dict, run_id, ckpt_path, manifest_path, run_dir, shard: tuple[int, int] | None = None) -> Path:
    """``run_dir/predictions.csv`` for the test images; ``shard=(k, n)``: only the k-th of n
    parts (whole prediction batches). A rerun after a kill predicts only the batches the killed
    run had not finished."""
    model, hp = load_model_from_checkpoint(ckpt_path)
    manifest = load_manifest(manifest_path)
    stats = hp["normalization"]  # the training statistics travel with the model
    names = list(hp["class_names"])
    if list(manifest["classes"]) != names and manifest["classes"]:
        raise BioflowError(f"{ckpt_path}: trained on classes {names} but the manifest lists "
                           f"{manifest['classes']}; retrain or use the matching data")
    entries = manifest["splits"]["test"]
    if not entries:
        raise BioflowError(f"{manifest_path}: no test images; set data.test to a folder of images")
    multilabel = bool(hp.get("multilabel"))
    train_data_cfg = hp["cfg"]["data"]  # preprocessing exactly as in training
    meta_mean = hp.get("metadata_mean")
    if meta_mean is not None and any(e.get("metadata") is None for e in entries):
        raise BioflowError(f"data.metadata_csv: test images lack metadata; the model {ckpt_path} "
                           f"fuses metadata, add rows for the test images")
    inf = cfg["inference"]
    # thresholds were chosen on the validation set at training (the checkpoint's record), on
    # probabilities made the way these are: with TTA when inference.tta is on
    thr = thresholds.resolve(inf["threshold"], threshold_record(hp, inf["tta"]), len(names), multilabel,
                             ckpt_path)
    batch = int(inf["batch_size"]) * 4
    entries = entries[shards.part(len(entries), batch, shard)]
    ds = ClassificationDataset(manifest, entries, stats, train_data_cfg, None, multilabel,
                               meta_mean, hp.get("metadata_std"), len(names))
    policy = precision.resolve(inf["precision"], key="inference.precision")
    log.info("predict run %s: %s", run_id, policy.describe())
    # TTA uses only the transforms the model was trained with
    flags = tta_flags(hp["cfg"]["train"]["augmentation"]) if inf["tta"] else None
    test_root = (manifest.get("data_paths") or {}).get("test")

    # Batch by batch, each recorded once its rows are known, so a rerun after a kill predicts
    # only the batches without a record (bioflow.inference.resume). The loader runs over the
    # unrecorded batches only; they are whole batches, so every batch holds the same images as
    # in an uninterrupted run and the probabilities are identical.
    run_dir = Path(run_dir)
    done = resume.Done(run_dir, ckpt_path, {"inference": inf})
    starts = range(0, len(entries), batch)
    rows_at: dict[int, list[dict]] = {}
    for i in starts:
        rec = done.get(f"batch_{i:08d}")
        if rec is not None and rec["paths"] == [e["path"] for e in entries[i:i + batch]]:
            rows_at[i] = rec["rows"]
    if rows_at:
        log.info("predict run %s: %d of %d batches finished by an earlier, interrupted run; not "
                 "predicted again", run_id, len(rows_at), len(starts))
    todo = [i for i in starts if i not in rows_at]
    items = [k for i in todo for k in range(i, min(i + batch, len(entries)))]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, items), batch_size=batch, shuffle=False,
                                         **loader_kwargs(cfg["train"]["num_workers"]))
    probs = iter_proba(model, loader, torch.device(policy.device), multilabel, flags, policy)
    for i, p in zip(todo, probs):
        part = entries[i:i + batch]
        rows_at[i] = [{**_row(e, q, names, multilabel, test_root, inf, thr), "precision": policy.precision}
                      for e, q in zip(part, p)]
        done.put(f"batch_{i:08d}", {"paths": [e["path"] for e in part], "rows": rows_at[i]})
    rows = [r for i in starts for r in rows_at[i]]
    out = run_dir / "predictions.csv"
    shards.write_csv(rows, out, float_format="%.6g")
    done.clear()
    log.info("predict run %s: %d test images -> %s (tta %s, threshold %s)", run_id, len(rows), out, inf["tta"],
             "argmax" if thr is None else f"{thr['method']} {thr['threshold']}")
    return out


def _row(e: dict, p: np.ndarray, names: list[str], multilabel: bool, test_root, inf, thr=None) -> dict:
    """One predictions.csv row (see the module docstring); ``thr``: of thresholds.resolve."""
    row = {"file": _display_name(e, test_root)}
    if multilabel:
        pred = (p >= float(inf["binarize_threshold"])).astype(int)
        true = e.get("label")
        row["true_class"] = "" if true is None else ";".join(n for n, t in zip(names, true) if t)
        row["pred_class"] = ";".join(n for n, t in zip(names, pred) if t)
        for j, n in enumerate(names):
            row[f"prob_{n}"] = float(p[j])
        for j, n in enumerate(names):
            row[f"pred_{n}"] = int(pred[j])
        for j, n in enumerate(names):
            row[f"true_{n}"] = "" if true is None else int(true[j])
        if thr is not None:
            ts = np.asarray(thr["threshold"], dtype=np.float64)
            tpred = (p >= ts).astype(int)
            row["pred_class_thresholded"] = ";".join(n for n, t in zip(names, tpred) if t)
            row["threshold_method"] = thr["method"]
            for j, n in enumerate(names):
                row[f"threshold_{n}"] = float(ts[j])
            for j, n in enumerate(names):
                row[f"pred_thresholded_{n}"] = int(tpred[j])
    else:
        label = e.get("label")
        row["true_class"] = "" if label is None else names[int(label)]
        row["pred_class"] = names[int(np.argmax(p))]
        for j, n in enumerate(names):
            row[f"prob_{n}"] = float(p[j])
        if thr is not None:  # binary: the positive class is names[1]
            row["pred_class_thresholded"] = names[int(p[1] >= thr["threshold"])]
            row["threshold_method"] = thr["method"]
            row["threshold"] = float(thr["threshold"])
    return row
