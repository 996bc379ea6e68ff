"""The one Lightning trainer shared by every workflow: :class:`BioflowModule` and :func:`fit`.

A workflow supplies the model, the loss, epoch-level metric functions and a datamodule; this
module does the rest the same way for all of them: seeding from ``run_id``, optimizer and
schedule (``bioflow.training.optim``), best / last checkpoints, early stopping, a wall-time
limit, CSV + TensorBoard logs, PNG charts, augmented sample images, the run summary, and
resuming after a kill.

Resume rule: the working folder ``<root>/checkpoints/<name>_<run_id>/`` (not a declared
Snakemake output, so it survives a failed job) holds ``last.ckpt`` and ``config_hash.txt``. A
rerun resumes from ``last.ckpt`` only when the hash of the training-relevant config matches;
keys that only say how long or where to train (``RESUME_NEUTRAL_TRAIN_KEYS``) are left out of
the hash, so raising ``train.epochs`` continues a run while a changed lr starts afresh.

Checkpoints carry ``hyper_parameters`` with at least ``cfg`` (the config sections) and
``model_extra`` (keyword arguments of ``build_model``), so
:func:`bioflow.models.checkpoint.load_model_from_checkpoint` rebuilds the model from the file alone.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from lightning_fabric.plugins.environments import LightningEnvironment
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, Timer
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from bioflow import __version__, progress
from bioflow.errors import BioflowError
from bioflow.io import atomic_path, file_sha256, write_json, write_text
from bioflow.models import precision
from bioflow.models.device import pick_device
from bioflow.models.serialization import load_tensors
from bioflow.provenance import library_versions
from bioflow.training import optim
from bioflow.training.charts import plot_history, save_sample

log = logging.getLogger(__name__)

CONFIG_SECTIONS = ("experiment", "data", "model", "train")
# Keys that say how long or where to train, not what: a change keeps the resume folder.
RESUME_NEUTRAL_TRAIN_KEYS = ("epochs", "patience", "max_time_minutes", "num_workers",
                             "n_sample_images", "devices", "strategy")


# --- seeding, hashing --------------------------------------------------------------------

def seed_for(run_id) -> int:
    """The seed of a run: the run id itself (run 1 and run 2 differ, reruns are identical)."""
    return int(run_id)


def seed_run(run_id) -> int:
    """Seed python, numpy and torch (and dataloader workers) from ``run_id``. Call it before
    building the model so initial weights depend on the run id; :func:`fit` calls it again."""
    seed = seed_for(run_id)
    pl.seed_everything(seed, workers=True, verbose=False)
    return seed


def training_config(cfg: dict) -> dict:
    """The train stage's config slice (what the trained model depends on: nothing about the
    test set, inference or reports) minus the resume-neutral keys and the runtime keys."""
    out = copy.deepcopy(cfg)
    for k in RESUME_NEUTRAL_TRAIN_KEYS:
        out["train"].pop(k, None)
    out.pop("inference", None)  # only inference.batch_size, for validation batches
    return out


def config_hash(cfg: dict) -> str:
    text = json.dumps(training_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- the LightningModule ---------------------------------------------------------------

def unpack_batch(batch):
    """``{"image", "target"[, "meta"]}`` or ``(image, target[, meta])`` -> (x, y, meta)."""
    if isinstance(batch, dict):
        return batch["image"], batch.get("target"), batch.get("meta")
    x, y = batch[0], batch[1]
    return x, y, (batch[2] if len(batch) > 2 else None)


def plain(value, where: str = "value"):
    """``value`` itself when it holds only dicts, lists, tuples, str, int, float, bool and None:
    what a checkpoint may carry besides tensors so that it loads with ``weights_only=True``."""
    if type(value) is dict:  # exactly: a dict subclass pickles as a class, refused by weights_only
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is not a str")
            plain(v, f"{where}.{k}")
    elif type(value) in (list, tuple):
        for i, v in enumerate(value):
            plain(v, f"{where}[{i}]")
    elif not (value is None or type(value) in (str, int, float, bool)):
        raise TypeError(f"{where}: {type(value).__name__} is not plain data; checkpoints must load "
                        f"with torch.load(weights_only=True)")
    return value


class BioflowModule(pl.LightningModule):
    """Thin wrapper: forward = ``model(x[, meta])``; logs ``train_loss``, ``val_loss`` and
    ``val_<name>`` for each ``metric_fns[name](logits, target) -> float tensor``.

    ``epoch_metrics=True`` (default) evaluates the metrics once per epoch on the concatenated
    validation outputs (needed for AUC); ``False`` averages them over batches (use it when the
    outputs are too large to keep, e.g. 3D segmentation).

    ``val_record(logits, target) -> dict | None`` (with ``epoch_metrics``): plain data about each
    epoch's validation outputs, saved in that epoch's checkpoints as ``validation`` and moved into
    the best checkpoint's ``hyper_parameters`` by :func:`fit` (e.g. decision thresholds chosen on
    the best epoch's validation probabilities).
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, train_cfg: dict,
                 metric_fns: dict[str, Callable] | None = None, hparams: dict | None = None,
                 epoch_metrics: bool = True, val_record: Callable | None = None):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.train_cfg = dict(train_cfg)
        self.metric_fns = dict(metric_fns or {})
        self.epoch_metrics = epoch_metrics
        self.monitor, self.mode = "val_loss", "min"
        self.horizon: dict = {"total_steps": None}  # schedule length, see TimeBudgetSchedule
        self.policy = precision.resolve("32", "cpu")  # fit() sets the run's policy
        # a deep copy turns a stage's config slice (StageConfig) into plain dicts
        self.save_hyperparameters(plain(copy.deepcopy(dict(hparams or {})), "hparams"))
        self._val_logits, self._val_targets = [], []
        self.val_record, self._val_record = val_record, None

    def forward(self, x, meta=None):
        x = self.policy.prepare_input(x)  # autocast comes from the Trainer's precision plugin
        return self.model(x) if meta is None else self.model(x, meta)

    def training_step(self, batch, batch_idx):
        x, y, meta = unpack_batch(batch)
        loss = self.loss_fn(self(x, meta), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=x.shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, meta = unpack_batch(batch)
        logits = self(x, meta)
        loss = self.loss_fn(logits, y)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=x.shape[0], sync_dist=True)
        if self.epoch_metrics:
            self._val_logits.append(logits.detach().float())
            self._val_targets.append(y.detach())
        else:
            for name, fn in self.metric_fns.items():
                self.log(f"val_{name}", torch.as_tensor(fn(logits.detach().float(), y), dtype=torch.float32),
                         on_step=False, on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        return loss

    def on_validation_epoch_end(self):
        if not (self.epoch_metrics and self._val_logits and (self.metric_fns or self.val_record)):
            self._val_logits, self._val_targets = [], []
            return
        logits, target = torch.cat(self._val_logits), torch.cat(self._val_targets)
        self._val_logits, self._val_targets = [], []
        if self.trainer.world_size > 1:  # every rank computes the metric on all outputs
            logits = self.all_gather(logits).flatten(0, 1)
            target = self.all_gather(target).flatten(0, 1)
        logits, target = logits.cpu(), target.cpu()
        for name, fn in self.metric_fns.items():
            value = torch.as_tensor(fn(logits, target), dtype=torch.float32)
            self.log(f"val_{name}", value, on_step=False, on_epoch=True, prog_bar=True)
        if self.val_record is not None:
            rec = self.val_record(logits, target)
            self._val_record = None if rec is None else plain({**rec, "epoch": int(self.current_epoch)}, "val_record")

    def on_save_checkpoint(self, checkpoint):
        # saved after this epoch's validation: the best checkpoint holds its own epoch's record
        if self._val_record is not None:
            checkpoint["validation"] = self._val_record

    def configure_optimizers(self):
        epochs = max(int(self.trainer.max_epochs or self.train_cfg["epochs"]), 1)
        total = self.trainer.estimated_stepping_batches
        spe = max(int(total // epochs), 1) if np.isfinite(total) else 1
        return optim.configure(self.model.parameters(), self.train_cfg, spe, epochs,
                               monitor=self.monitor, mode=self.mode, horizon=self.horizon)


class TimeBudgetSchedule(pl.Callback):
    """Fit the lr schedule into ``train.max_time_minutes``.

    After each epoch, the epochs that still fit in the remaining time (at the mean epoch
    duration so far) set the schedule length, so a warmup-cosine or one-cycle schedule
    planned for ``train.epochs`` anneals before the time limit stops training instead of being
    cut off at a high learning rate. The value is broadcast so every DDP rank uses the same.
    """

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self._t0, self._durations = None, []

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module):
        if self._t0 is None or not hasattr(pl_module, "horizon"):
            return
        self._durations.append(time.monotonic() - self._t0)
        timer = next((c for c in trainer.callbacks if isinstance(c, pl.callbacks.Timer)), None)
        elapsed = timer.time_elapsed("train") if timer is not None else sum(self._durations)
        per_epoch = float(np.mean(self._durations[1:] if len(self._durations) > 1 else self._durations))
        done = trainer.current_epoch + 1
        fit_epochs = done + int(max(self.seconds - elapsed, 0.0) // max(per_epoch, 1e-6))
        epochs = min(int(trainer.max_epochs), max(fit_epochs, done))
        nb = trainer.num_training_batches
        spe = max(int(nb), 1) if np.isfinite(nb) else 1
        total = trainer.strategy.broadcast(epochs * spe)
        pl_module.horizon["total_steps"] = int(total)


class ProgressLog(pl.Callback):
    """Training progress in the log at a steady rhythm (:class:`bioflow.progress.Progress`):
    epoch / step, items/s, the running train loss, the last monitored metric and the ETA; a
    line at the end of every epoch's validation; and the time spent waiting for data.

    Data wait = the gap between the end of one training step and the start of the next (the
    loader's ``next()``, including worker start-up at the start of an epoch); compute = the step
    itself. ``wait_share`` goes into ``train_summary.json``.
    """

    def __init__(self, monitor: str, interval_s: float = progress.INTERVAL_S):
        self.monitor, self.interval_s = monitor, float(interval_s)
        self.wait_s = self.step_s = 0.0
        self.items = 0
        self._t_end = self._t_start = None
        self._loss_sum, self._loss_n = 0.0, 0
        self._prog = None
        self._t_fit = None

    def on_train_start(self, trainer, pl_module):
        self._t_fit = time.monotonic()
        self._steps_at_start = int(trainer.global_step)
        self._prog = progress.Progress("train", None, "items", self.interval_s, log)

    def on_train_epoch_start(self, trainer, pl_module):
        self._t_end = time.monotonic()
        self._loss_sum, self._loss_n = 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.monotonic()
        if self._t_end is not None:
            self.wait_s += now - self._t_end
        self._t_start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.monotonic()
        if self._t_start is not None:
            self.step_s += now - self._t_start
        self._t_end = now
        x, _, _ = unpack_batch(batch)
        n = int(x.shape[0])
        self.items += n
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._loss_sum += float(loss.detach())
            self._loss_n += 1
        nb = trainer.num_training_batches
        nb = int(nb) if np.isfinite(nb) else None
        epochs = int(trainer.max_epochs)
        pos = f"epoch {trainer.current_epoch + 1}/{epochs} step {batch_idx + 1}/{nb if nb else '?'}"
        self._prog.update(n, position=pos, eta_s=self._eta(trainer, batch_idx, nb), **self._fields(trainer))

    def on_validation_epoch_start(self, trainer, pl_module):
        self._t_end = None  # validation time is not data wait

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        log.info("train: epoch %d/%d done | %s | %s %s | ETA %s", trainer.current_epoch + 1, int(trainer.max_epochs),
                 progress.format_fields({"train_loss": self._mean_loss(), **m}), self.monitor,
                 progress.format_fields({"best": _score(trainer)}) or "-",
                 progress.format_eta(self._eta(trainer, None, None)))

    def on_train_end(self, trainer, pl_module):
        if self._prog is not None:
            self._prog.close()

    def _mean_loss(self):
        return self._loss_sum / self._loss_n if self._loss_n else None

    def _fields(self, trainer) -> dict:
        out = {"train_loss": self._mean_loss()}
        val = trainer.callback_metrics.get(self.monitor)
        if val is not None and self.monitor != "train_loss":
            out[self.monitor] = float(val)
        return out

    def _eta(self, trainer, batch_idx, nb) -> float | None:
        """Seconds left at the mean step time so far (validation included), capped by the
        wall-time limit when one is set."""
        done = int(trainer.global_step) - self._steps_at_start
        if done <= 0 or self._t_fit is None:
            return None
        per_step = (time.monotonic() - self._t_fit) / done
        nb_all = trainer.num_training_batches
        if not np.isfinite(nb_all):
            return None
        total = int(trainer.max_epochs) * int(nb_all) - int(trainer.global_step)
        eta = max(total, 0) * per_step
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is not None and timer.time_remaining("train") is not None:
            eta = min(eta, float(timer.time_remaining("train")))
        return eta

    def summary(self) -> dict:
        total = self.wait_s + self.step_s
        return {"data_wait_s": round(self.wait_s, 2), "step_compute_s": round(self.step_s, 2),
                "data_wait_share": round(self.wait_s / total, 4) if total > 0 else None,
                "items_per_s": round(self.items / total, 2) if total > 0 else None}


def _score(trainer):
    cb = trainer.checkpoint_callback
    s = getattr(cb, "best_model_score", None)
    return None if s is None else float(s)


# --- fit ---------------------------------------------------------------------------------

# train_summary.json fields a checkpoint keeps as its training record
PROVENANCE_TRAINING = ("run_id", "seed", "monitor", "best_score", "best_epoch", "epochs_run", "max_epochs",
                       "stop_reason", "resumed", "wall_time_s", "device", "precision")


def provenance(summary: dict, manifest_path=None) -> dict:
    """Where a model comes from, stored in its checkpoint and every export of it: bioflow and
    torch versions, the hash of the training config (as for resuming), the hash of the training
    data manifest (train / val files with their shapes), and the training summary."""
    return {"bioflow_version": __version__, "torch_version": str(torch.__version__),  # a TorchVersion: not weights_only-safe
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config_hash": summary["config_hash"],
            "manifest": None if manifest_path is None else str(manifest_path),
            "manifest_sha256": None if manifest_path is None else file_sha256(manifest_path),
            "training": {k: summary[k] for k in PROVENANCE_TRAINING}}


def _copy_weights_only(src: Path, dst: Path, prov: dict, extra: dict | None = None) -> None:
    """Copy a checkpoint without optimizer / scheduler state (inference needs neither), with
    its provenance and ``extra`` (plain data) added to the hyper-parameters."""
    ck = load_tensors(src, "checkpoint")
    for k in ("optimizer_states", "lr_schedulers"):
        ck.pop(k, None)
    validation = ck.pop("validation", None)  # BioflowModule.val_record of the best epoch
    ck["hyper_parameters"] = {**ck["hyper_parameters"], "provenance": prov,
                              **({"validation": validation} if validation is not None else {}),
                              **plain(dict(extra or {}), "finalize")}
    with atomic_path(dst) as tmp:
        torch.save(ck, tmp)


class MonitorEMA(pl.Callback):
    """``<monitor>_ema``: the monitored validation metric smoothed over epochs,
    ``ema = alpha * ema + (1 - alpha) * value``, for early stopping and the best checkpoint.

    On a small validation set the raw metric jumps from epoch to epoch: early stopping then
    fires on a lucky epoch and the kept checkpoint is the luckiest one (AdrenalMNIST3D: 98
    validation volumes). nnU-Net selects its best checkpoint on such an average (alpha 0.9).
    Computed in ``on_validation_end``, after Lightning has reduced the epoch's metrics and
    before early stopping and the checkpoint callbacks (placed after it) read them. The state
    is saved in checkpoints, so a resumed run continues the same average.
    """

    def __init__(self, monitor: str, alpha: float):
        self.source, self.name, self.alpha = monitor, f"{monitor}_ema", float(alpha)
        self.value: float | None = None

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or self.source not in trainer.callback_metrics:
            return
        x = float(trainer.callback_metrics[self.source])
        self.value = x if self.value is None else self.alpha * self.value + (1 - self.alpha) * x
        trainer.callback_metrics[self.name] = torch.tensor(self.value)
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.log_metrics({self.name: self.value, "epoch": trainer.current_epoch}, step=trainer.global_step)

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state_dict):
        self.value = state_dict.get("value")


class ConfiguredEarlyStopping(EarlyStopping):
    """Early stopping whose patience is train.patience also on resume: Lightning restores the
    checkpoint's patience, so a patience changed before rerunning a killed job was ignored."""

    def load_state_dict(self, state_dict) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience


class InterruptGuard(pl.Callback):
    """Ctrl-C (SIGINT) and SIGTERM stop training for certain, and no summary is written after them.

    Python raises KeyboardInterrupt wherever the main thread happens to be, and one raised inside
    a finalizer (``__del__``, a weakref callback) is printed and swallowed: training then went on
    and, once it ended, wrote ``train_summary.json`` as if it had completed (seen once in a full
    test run). The handler records the signal; the next batch boundary re-raises it, and
    :func:`fit` refuses to write the summary of an interrupted run. SIGTERM is what Snakemake and
    ``scancel`` send; it is turned into the same KeyboardInterrupt so Lightning shuts down cleanly.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame):
        self.received = signum
        raise KeyboardInterrupt(f"signal {signum}")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()
        return False

    def _check(self):
        if self.received is not None:
            raise KeyboardInterrupt(f"signal {self.received}")

    def on_train_batch_end(self, *args, **kwargs):
        self._check()

    def on_validation_batch_end(self, *args, **kwargs):
        self._check()

    def on_train_epoch_end(self, *args, **kwargs):
        self._check()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their target and renamed into place. Lightning's own save
    goes through a file in the system temp folder moved with shutil.move, i.e. a copy when the
    results are on another file system (node-local /tmp, shared results): a job killed during
    the copy left a truncated last.ckpt, and the rerun started afresh."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def _old_log_rows(metrics_csv: Path, up_to_epoch: int):
    if not metrics_csv.is_file():
        return None
    try:
        df = pd.read_csv(metrics_csv)
    except Exception as exc:  # noqa: BLE001 - Lightning's CSV logger writes in place: a kill can tear it
        log.warning("%s: unreadable (%s); the resumed run's log starts at the resumed epoch", metrics_csv, exc)
        return None
    return df[df["epoch"] <= up_to_epoch] if "epoch" in df else None


def _merge_logs(metrics_csv: Path, old) -> None:
    if old is None or old.empty:
        return
    new = pd.read_csv(metrics_csv) if metrics_csv.is_file() else pd.DataFrame()
    merged = pd.concat([old, new], ignore_index=True)
    with atomic_path(metrics_csv) as tmp:
        merged.to_csv(tmp, index=False)


def _dataset_of(datamodule):
    ds = getattr(datamodule, "train_dataset", None)
    if ds is None:
        ds = datamodule.train_dataloader().dataset
    return ds


def save_augmented_samples(datamodule, out_dir: Path, n: int, seed: int, class_names=None) -> list[Path]:
    """``n`` augmented training samples as ``aug_samples_<i>.png`` (mask outline if any)."""
    if n <= 0:
        return []
    ds = _dataset_of(datamodule)
    if ds is None or len(ds) == 0:
        return []
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(ds), size=min(n, len(ds)), replace=False)
    state = torch.get_rng_state()
    torch.manual_seed(seed)  # dataset items draw their augmentation seed from torch
    written = []
    try:
        for i, j in enumerate(idx):
            x, y, _ = unpack_batch(ds[int(j)])
            x = np.asarray(x)
            mask, title = None, None
            if y is not None:
                y = np.asarray(y)
                if y.ndim == x.ndim - 1 and y.shape == x.shape[1:]:
                    mask = y
                elif y.ndim == 0 and class_names:
                    title = str(class_names[int(y)])
            written.append(save_sample(x, out_dir / f"aug_samples_{i}.png", mask, title))
    finally:
        torch.set_rng_state(state)
    return written


def fit(cfg: dict, run_id, module: BioflowModule, datamodule, ckpt_path, run_dir,
        monitor: str = "val_loss", mode: str = "min", manifest_path=None, summary_extra: dict | None = None,
        finalize: Callable[[Path], dict] | None = None) -> dict:
    """Train ``module`` on ``datamodule``; returns (and writes) ``run_dir/train_summary.json``.

    ``ckpt_path``: the declared best checkpoint ``<root>/checkpoints/<name>_<run_id>-best.ckpt``,
    written atomically at the end (weights + hyper_parameters + :func:`provenance`, no
    optimizer state). ``manifest_path``: the training manifest, hashed into the provenance.
    ``summary_extra``: what the run trained on (its cross-validation fold, image counts), added
    to the summary. ``finalize(best)``: extra hyper-parameters computed from the best (working)
    checkpoint, stored in the declared one (e.g. classification's validation record under
    test-time augmentation); it runs on the first process only.
    """
    tc = cfg["train"]
    ckpt_path, run_dir = Path(ckpt_path), Path(run_dir)
    # the working folder beside the declared checkpoint: <name>_<run_id>-best.ckpt -> <name>_<run_id>/
    work = ckpt_path.parent / ckpt_path.name.removesuffix(".ckpt").removesuffix("-best")
    logs = run_dir / "train_logs"
    charts = run_dir / "charts"
    seed = seed_run(run_id)

    # resume only a run of the same training config
    h = config_hash(cfg)
    hash_file, last = work / "config_hash.txt", work / "last.ckpt"
    resume_from, old_rows, start_epoch = None, None, 0
    if last.is_file() and hash_file.is_file() and hash_file.read_text().strip() == h:
        try:
            start_epoch = int(load_tensors(last, "checkpoint")["epoch"]) + 1
            resume_from = str(last)
            old_rows = _old_log_rows(logs / "metrics.csv", start_epoch - 1)
            log.info("resuming from %s at epoch %d", last, start_epoch)
        except Exception as exc:  # noqa: BLE001 - a truncated last.ckpt (killed mid-write)
            log.warning("cannot resume from %s (%s); starting afresh", last, exc)
            resume_from, start_epoch = None, 0
    if resume_from is None:
        if work.exists():
            log.info("config changed or no last checkpoint: starting afresh in %s", work)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    write_text(hash_file, h + "\n")

    module.monitor, module.mode = monitor, mode  # the raw metric (reduce_on_plateau)
    ema_cb = None
    if tc["monitor_ema"] > 0:
        ema_cb = MonitorEMA(monitor, tc["monitor_ema"])
        monitor = ema_cb.name  # early stopping and the best checkpoint follow the average
    policy = precision.resolve(tc["precision"], "cuda" if torch.cuda.is_available() else "cpu",
                               key="train.precision", training_3d=int(cfg["experiment"]["ndim"]) == 3)
    log.info("train: %s", policy.describe())
    module.policy = policy
    policy.prepare_model(module.model)
    ckpt_cb = ModelCheckpoint(dirpath=work, filename="best-{epoch:03d}", monitor=monitor, mode=mode,
                              save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
    # last.ckpt every epoch, for resuming. Not save_last=True on the callback above: Lightning
    # then rewrites last.ckpt only in epochs that improve the monitor, so a kill would lose
    # every epoch since the last improvement.
    last_cb = ModelCheckpoint(dirpath=work, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                              enable_version_counter=False)
    prog_cb = ProgressLog(monitor, progress.INTERVAL_S)
    guard = InterruptGuard()
    callbacks = [*([ema_cb] if ema_cb else []), ckpt_cb, last_cb, LearningRateMonitor(logging_interval="epoch"),
                 prog_cb, guard]
    es = None
    if int(tc["patience"]) > 0:
        es = ConfiguredEarlyStopping(monitor=monitor, mode=mode, patience=int(tc["patience"]))
        callbacks.append(es)
    max_time = tc["max_time_minutes"]
    if max_time:
        # checked every step: training stops within the budget, not after one more epoch
        callbacks.append(Timer(duration=timedelta(minutes=float(max_time)), interval="step"))
        if hasattr(module, "horizon"):
            callbacks.append(TimeBudgetSchedule(float(max_time) * 60))
    loggers = [CSVLogger(save_dir=run_dir, name="train_logs", version=""),
               TensorBoardLogger(save_dir=run_dir, name="train_logs", version="tensorboard",
                                 default_hp_metric=False)]
    steps = tc["steps_per_epoch"]
    plugins = [AtomicCheckpointIO()]
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1") or 1) <= 1:
        # one Snakemake job = one process: let Lightning launch its own device processes
        # instead of expecting srun-launched tasks (SLURMEnvironment)
        plugins.append(LightningEnvironment())
    pick_device("train")  # Lightning's "auto" falls back to the CPU silently; this warns
    trainer = pl.Trainer(
        max_epochs=int(tc["epochs"]), accelerator="auto", devices=tc["devices"],
        strategy=tc["strategy"], precision=policy.lightning,
        callbacks=callbacks, logger=loggers, default_root_dir=str(work),
        limit_train_batches=int(steps) if steps else 1.0,
        enable_progress_bar=progress.is_terminal(),  # a live bar on a terminal; the log gets ProgressLog's lines
        log_every_n_steps=10, num_sanity_val_steps=0, enable_model_summary=False,
        plugins=plugins)
    t0 = time.time()
    # our own last.ckpt holds tensors and plain data: no pickle needed to resume either
    with guard:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    wall = time.time() - t0
    if guard.received is not None or trainer.interrupted:
        # never a summary (the stage's declared output) for a run that did not finish
        raise KeyboardInterrupt(f"training interrupted (signal {guard.received}); rerun to resume")

    if not trainer.is_global_zero:
        return {}
    _merge_logs(logs / "metrics.csv", old_rows)
    best = ckpt_cb.best_model_path or ckpt_cb.last_model_path or (str(last) if last.is_file() else "")
    if not best or not Path(best).is_file():
        raise BioflowError(f"{work}: training wrote no checkpoint; check train.epochs and the data")

    timer = next((c for c in callbacks if isinstance(c, Timer)), None)
    if es is not None and es.stopped_epoch > 0:
        reason = "early_stopping"
    elif timer is not None and (timer.time_remaining("train") or 0) <= 0:
        reason = "max_time"
    else:
        reason = "max_epochs"
    charts.mkdir(parents=True, exist_ok=True)
    chart_files = plot_history(logs / "metrics.csv", charts)
    class_names = module.hparams.get("class_names") if hasattr(module, "hparams") else None
    sample_files = save_augmented_samples(datamodule, charts, int(tc["n_sample_images"]), seed,
                                          class_names)
    score = ckpt_cb.best_model_score
    best_epoch = None
    try:
        best_epoch = int(load_tensors(best, "checkpoint")["epoch"])
    except Exception:  # noqa: BLE001
        pass
    summary = {
        "run_id": run_id, "seed": seed, "monitor": monitor, "mode": mode,
        "best_score": None if score is None else float(score), "best_epoch": best_epoch,
        "epochs_run": int(trainer.current_epoch), "start_epoch": start_epoch,
        "resumed": resume_from is not None, "max_epochs": int(tc["epochs"]),
        "stop_reason": reason, "wall_time_s": round(wall, 2),
        "schedule_steps": getattr(module, "horizon", {}).get("total_steps"),
        "config_hash": h, "best_checkpoint": str(ckpt_path), "working_dir": str(work),
        "device": str(trainer.strategy.root_device), "precision": policy.as_dict(), "throughput": prog_cb.summary(),
        "charts": [str(p) for p in chart_files + sample_files],
        "versions": library_versions(),
        **(summary_extra or {}),
    }
    extra = finalize(Path(best)) if finalize is not None else {}
    _copy_weights_only(Path(best), ckpt_path, provenance(summary, manifest_path), extra)
    write_json(run_dir / "train_summary.json", summary)
    return summary
