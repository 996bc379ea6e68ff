"""Optimizers and learning-rate schedules, looked up by ``train.optimizer`` / ``train.scheduler``.

The schedules other than reduce_on_plateau are pure functions of the optimizer step
(:func:`lr_factor`), driven by a ``LambdaLR`` stepped every batch. Being closures they are not
stored in the checkpoint, so a resumed run with more ``train.epochs`` follows the new length
instead of failing the way torch's ``OneCycleLR`` does past its ``total_steps``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from bioflow.errors import BioflowError


def _adam(params, tc):
    return torch.optim.Adam(params, lr=tc["lr"], weight_decay=tc["weight_decay"])


def _adamw(params, tc):
    return torch.optim.AdamW(params, lr=tc["lr"], weight_decay=tc["weight_decay"])


def _sgd(params, tc):
    return torch.optim.SGD(params, lr=tc["lr"], momentum=tc["momentum"],
                           weight_decay=tc["weight_decay"], nesterov=tc["momentum"] > 0)


OPTIMIZERS: dict[str, Callable] = {"adam": _adam, "adamw": _adamw, "sgd": _sgd}
SCHEDULERS = ("none", "reduce_on_plateau", "one_cycle", "warmup_cosine")

ONE_CYCLE_PCT = 0.3        # fraction of the steps spent rising (torch's default)
ONE_CYCLE_DIV = 25.0       # start lr = lr / 25
ONE_CYCLE_FINAL_DIV = 1e4  # end lr = start lr / 1e4
COSINE_MIN = 0.01          # warmup_cosine ends at 1% of lr


def _cos(a: float, b: float, frac: float) -> float:
    """Cosine interpolation from a (frac=0) to b (frac=1)."""
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of the base lr at optimizer ``step`` (0-based) for a step-wise schedule."""
    total = max(int(total_steps), 1)
    if schedule == "none":
        return 1.0
    if schedule == "warmup_cosine":
        w = min(int(warmup_steps), total - 1)
        if step < w:
            return (step + 1) / (w + 1)
        return _cos(1.0, COSINE_MIN, (step - w) / max(total - w - 1, 1))
    if schedule == "one_cycle":
        up = max(int(ONE_CYCLE_PCT * total), 1)
        start = 1.0 / ONE_CYCLE_DIV
        if step < up:
            return _cos(start, 1.0, step / up)
        return _cos(1.0, start / ONE_CYCLE_FINAL_DIV, (step - up) / max(total - up - 1, 1))
    raise BioflowError(f"train.scheduler: unknown '{schedule}'; valid: {', '.join(SCHEDULERS)}")


def build_optimizer(params, train_cfg: dict) -> torch.optim.Optimizer:
    name = train_cfg["optimizer"]
    if name not in OPTIMIZERS:
        raise BioflowError(f"train.optimizer: unknown '{name}'; valid: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, train_cfg)


def configure(module_params, train_cfg: dict, steps_per_epoch: int, epochs: int,
              monitor: str = "val_loss", mode: str = "min", horizon: dict | None = None):
    """What ``LightningModule.configure_optimizers`` returns for ``train.*``.

    ``reduce_on_plateau`` watches ``monitor`` (factor 0.5, patience max(1, patience // 4))
    once per epoch; the other schedules step per batch. ``horizon``: a mutable dict whose
    ``"total_steps"`` (when set) replaces ``steps_per_epoch * epochs`` as the schedule length,
    read at every step -- the engine shortens it when ``train.max_time_minutes`` will stop
    training before ``epochs`` (so the schedule still anneals within the time budget).
    """
    opt = build_optimizer(module_params, train_cfg)
    sched = train_cfg["scheduler"]
    if sched not in SCHEDULERS:
        raise BioflowError(f"train.scheduler: unknown '{sched}'; valid: {', '.join(SCHEDULERS)}")
    if sched == "none":
        return {"optimizer": opt}
    if sched == "reduce_on_plateau":
        pat = max(1, int(train_cfg["patience"]) // 4)
        s = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=pat)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": s, "monitor": monitor,
                                                   "interval": "epoch", "frequency": 1}}
    spe = max(int(steps_per_epoch), 1)
    total = spe * max(int(epochs), 1)
    warm = spe * int(train_cfg["warmup_epochs"])

    def factor(step):  # a closure: not pickled into checkpoints (see module docstring)
        t = (horizon or {}).get("total_steps") or total
        return lr_factor(sched, step, t, min(warm, t // 2))

    s = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": s, "interval": "step", "frequency": 1}}
