"""The shared Lightning engine: fit, checkpoints, logs, charts, resume after a kill."""

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from bioflow.models.checkpoint import load_model_from_checkpoint
from bioflow.training import engine, optim


class Toy(Dataset):
    """Two linearly separable classes; items are dicts like the real datasets'."""

    def __init__(self, n=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 2
        self.x = torch.randn(n, 1, 8, 8, generator=g) + self.y.view(-1, 1, 1, 1) * 2.0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "target": self.y[i]}


class ToyDM(pl.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.train_dataset, self.val_dataset = Toy(32, 0), Toy(16, 1)

    def train_dataloader(self):
        return DataLoader(self.train_dataset, batch_size=8, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_dataset, batch_size=8)


def _cfg(tmp_path, **train):
    from bioflow.config import validate
    tc = {"epochs": 2, "patience": 0, "batch_size": 8, "optimizer": "adam", "lr": 1e-2,
          "weight_decay": 0.0, "scheduler": "warmup_cosine", "warmup_epochs": 1, "n_sample_images": 2}
    tc.update(train)
    return validate({"experiment": {"name": "toy", "workflow": "classification", "ndim": 2, "run_ids": [1],
                                    "result_dir": str(tmp_path)},
                     "data": {"train": str(tmp_path), "channels": 1, "patch_size": [8, 8]},
                     "model": {"architecture": "simple_cnn", "n_classes": 2, "features": [4, 8]},
                     "train": tc})


def _train(**over) -> dict:
    """The validated train section (schema defaults) with ``over`` applied."""
    return {**_cfg("/tmp")["train"], **over}


def _acc(logits, target):
    return (logits.argmax(1) == target).float().mean()


def _run(tmp_path, cfg):
    from bioflow.models import build_model
    from bioflow.training.losses import build_loss
    engine.seed_run(1)
    model = build_model(cfg)
    module = engine.BioflowModule(model, build_loss(cfg["train"], 2), cfg["train"], {"acc": _acc},
                                  {"cfg": cfg, "class_names": ["a", "b"], "model_extra": {}})
    root = tmp_path / "toy"
    return engine.fit(cfg, 1, module, ToyDM(), root / "checkpoints" / "toy_1-best.ckpt",
                      root / "results" / "toy_1", monitor="val_acc", mode="max")


def test_fit_writes_checkpoint_logs_charts_and_resumes(tmp_path):
    cfg = _cfg(tmp_path)
    s = _run(tmp_path, cfg)
    root = tmp_path / "toy"
    best = root / "checkpoints" / "toy_1-best.ckpt"
    run = root / "results" / "toy_1"
    assert best.is_file() and (root / "checkpoints" / "toy_1" / "last.ckpt").is_file()
    assert s["epochs_run"] == 2 and s["start_epoch"] == 0 and s["stop_reason"] == "max_epochs"
    assert json.loads((run / "train_summary.json").read_text())["best_score"] == pytest.approx(s["best_score"])
    import pandas as pd
    log = pd.read_csv(run / "train_logs" / "metrics.csv")
    assert {"train_loss", "val_loss", "val_acc"} <= set(log.columns)
    assert (run / "charts" / "loss.png").is_file() and (run / "charts" / "val_acc.png").is_file()
    assert (run / "charts" / "lr-Adam.png").is_file()  # LearningRateMonitor rows get their epoch
    assert len(list((run / "charts").glob("aug_samples_*.png"))) == 2
    assert list((run / "train_logs" / "tensorboard").glob("events.*"))
    # the checkpoint alone rebuilds the model (no optimizer state in the declared copy)
    ck = torch.load(best, weights_only=True)
    assert "optimizer_states" not in ck and ck["hyper_parameters"]["class_names"] == ["a", "b"]
    model, hp = load_model_from_checkpoint(best)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 2)

    # a "killed" run: the declared output is gone; rerun with more epochs resumes at epoch 2
    best.unlink()
    s2 = _run(tmp_path, _cfg(tmp_path, epochs=3))
    assert s2["resumed"] and s2["start_epoch"] == 2 and s2["epochs_run"] == 3
    log = pd.read_csv(run / "train_logs" / "metrics.csv")
    assert sorted(log.dropna(subset=["train_loss"])["epoch"].unique()) == [0, 1, 2]
    assert best.is_file()

    # a changed lr must not resume the stale run
    s3 = _run(tmp_path, _cfg(tmp_path, epochs=3, lr=5e-3))
    assert not s3["resumed"] and s3["start_epoch"] == 0 and s3["epochs_run"] == 3


def test_early_stopping_and_summary_reason(tmp_path):
    cfg = _cfg(tmp_path, epochs=30, patience=1, lr=1e-9, scheduler="none", n_sample_images=0)
    s = _run(tmp_path, cfg)
    assert s["stop_reason"] == "early_stopping" and s["epochs_run"] < 30


def test_changed_patience_is_honoured_on_resume(tmp_path):
    # no progress (lr ~ 0): a patience of 50 never stops the first 3 epochs
    s = _run(tmp_path, _cfg(tmp_path, epochs=3, patience=50, lr=1e-9, scheduler="none", n_sample_images=0))
    assert s["stop_reason"] == "max_epochs"
    (tmp_path / "toy" / "checkpoints" / "toy_1-best.ckpt").unlink()  # killed before the end
    # rerun with patience 1 (a resume-neutral key): resumes, and stops for the new patience
    # instead of running on for the 50 the checkpoint remembers
    s2 = _run(tmp_path, _cfg(tmp_path, epochs=30, patience=1, lr=1e-9, scheduler="none", n_sample_images=0))
    assert s2["resumed"] and s2["start_epoch"] == 3
    assert s2["stop_reason"] == "early_stopping" and s2["epochs_run"] <= 5


def test_time_limit_stops_and_shortens_the_schedule(tmp_path):
    cfg = _cfg(tmp_path, epochs=1000, max_time_minutes=0.04, n_sample_images=0)
    s = _run(tmp_path, cfg)
    assert s["stop_reason"] == "max_time" and 1 <= s["epochs_run"] < 1000
    assert s["wall_time_s"] < 2.4 + 3  # within the budget (plus one step and teardown)
    # the schedule length was fitted to the epochs that fit in the time, not 1000 epochs
    assert s["schedule_steps"] is not None and s["schedule_steps"] < 1000 * 4


def test_config_hash_ignores_duration_keys_only():
    # a train slice (run_ids, test set, inference are never in it: tests/test_stage_contract.py)
    base = {"experiment": {"ndim": 2}, "data": {}, "model": {"architecture": "x"},
            "train": {"epochs": 2, "lr": 1e-3, "patience": 3, "num_workers": 0}}
    other = json.loads(json.dumps(base))
    other["train"]["epochs"], other["train"]["patience"], other["train"]["num_workers"] = 9, 1, 2
    assert engine.config_hash(base) == engine.config_hash(other)
    other["train"]["lr"] = 1e-4
    assert engine.config_hash(base) != engine.config_hash(other)


@pytest.mark.parametrize("sched", ["warmup_cosine", "one_cycle"])
def test_lr_factor_shapes(sched):
    total, warm = 100, 10
    f = [optim.lr_factor(sched, s, total, warm) for s in range(total)]
    peak = int(np.argmax(f))
    assert max(f) == pytest.approx(1.0, abs=1e-3)
    assert all(a <= b + 1e-12 for a, b in zip(f[:peak], f[1:peak + 1]))  # rises to the peak
    assert all(a >= b - 1e-12 for a, b in zip(f[peak:], f[peak + 1:]))  # then falls
    assert f[-1] < 0.02
    if sched == "warmup_cosine":
        assert peak == warm and f[0] == pytest.approx(1 / 11)
        assert f[-1] == pytest.approx(optim.COSINE_MIN)
    else:
        assert f[0] == pytest.approx(1 / optim.ONE_CYCLE_DIV) and peak == 30
    # past the end (a resumed run with more epochs) stays finite and low
    assert 0 <= optim.lr_factor(sched, 500, total, warm) < 0.02


def test_lr_factor_warmup_cosine_midpoint():
    # half-way through the cosine part: (1 + min) / 2
    assert optim.lr_factor("warmup_cosine", 0 + 50, 101, 0) == pytest.approx((1 + optim.COSINE_MIN) / 2)


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                      ("sgd", torch.optim.SGD)])
def test_optimizers(name, cls):
    p = [torch.nn.Parameter(torch.zeros(3))]
    out = optim.configure(p, _train(optimizer=name, lr=0.1, weight_decay=0.01, scheduler="none"), 5, 2)
    assert isinstance(out["optimizer"], cls) and out["optimizer"].param_groups[0]["lr"] == 0.1
    assert "lr_scheduler" not in out


def test_schedulers_step_the_lr():
    p = [torch.nn.Parameter(torch.zeros(3))]
    out = optim.configure(p, _train(optimizer="sgd", lr=1.0, scheduler="one_cycle", warmup_epochs=0), 10, 2)
    opt, sch = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert out["lr_scheduler"]["interval"] == "step"
    assert opt.param_groups[0]["lr"] == pytest.approx(1 / optim.ONE_CYCLE_DIV)
    lrs = []
    for _ in range(20):
        opt.step()
        sch.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(1.0, abs=0.02) and lrs[-1] < 0.01
    rop = optim.configure(p, _train(optimizer="adam", lr=1.0, scheduler="reduce_on_plateau", patience=4), 10, 2,
                         monitor="val_auc", mode="max")
    assert rop["lr_scheduler"]["monitor"] == "val_auc"
    assert isinstance(rop["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)


def test_unknown_optimizer_and_scheduler_list_valid_names():
    from bioflow.errors import BioflowError
    p = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(BioflowError, match="train.optimizer.*adamw"):
        optim.configure(p, _train(optimizer="lion", lr=1.0), 1, 1)
    with pytest.raises(BioflowError, match="train.scheduler.*warmup_cosine"):
        optim.configure(p, _train(optimizer="adam", lr=1.0, scheduler="step"), 1, 1)


def test_last_checkpoint_written_every_epoch_even_without_improvement(tmp_path):
    # lr ~ 0: the monitored metric never improves after epoch 0; last.ckpt must still be the
    # newest epoch, or a killed run would resume from its last improvement.
    cfg = _cfg(tmp_path, epochs=3, patience=0, lr=1e-12, scheduler="none", n_sample_images=0)
    _run(tmp_path, cfg)
    last = torch.load(tmp_path / "toy" / "checkpoints" / "toy_1" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2


@pytest.mark.parametrize("prec", ["32", "bf16"])
def test_precision_policy_progress_lines_and_data_wait_in_summary(tmp_path, caplog, monkeypatch, prec):
    import logging
    from bioflow import progress
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)  # a line every step
    cfg = _cfg(tmp_path, precision=prec, n_sample_images=0)
    with caplog.at_level(logging.INFO):
        s = _run(tmp_path, cfg)
    p = s["precision"]
    assert p["requested"] == prec and p["precision"] == prec and p["device"] == "cpu" and p["channels_last"]
    t = s["throughput"]
    assert 0 <= t["data_wait_share"] <= 1 and t["items_per_s"] > 0 and t["step_compute_s"] > 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train: ")]
    steps = [m for m in lines if " step " in m]
    assert len(steps) >= 8  # 2 epochs x 4 steps
    assert "epoch 2/2 step 4/4" in steps[-1] and "items/s" in steps[-1] and "train_loss" in steps[-1]
    assert "ETA" in steps[-1]
    assert sum(" done " in m for m in lines) == 2  # one line per validated epoch, with val_acc
    assert any("val_acc" in m for m in lines if " done " in m)
    assert any("precision " + prec in m for m in lines)


class _SwallowedCtrlC:
    """Sends SIGINT to this process from inside a finalizer: Python prints the KeyboardInterrupt
    raised there and swallows it, as happens when Ctrl-C lands while a ``__del__`` runs."""

    def __del__(self):
        import os
        import signal
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10000):  # the handler runs between these bytecodes, inside __del__
            pass


class _CtrlCInFinalizer(pl.Callback):
    def on_train_batch_end(self, trainer, *args, **kwargs):
        if trainer.current_epoch == 1 and trainer.global_step % 4 == 1:
            obj = _SwallowedCtrlC()
            del obj


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_an_interrupted_fit_stops_and_writes_no_summary(tmp_path, monkeypatch, signame):
    """Ctrl-C swallowed by a finalizer, or SIGTERM (scancel, Snakemake): training still stops
    at the next batch, and no train_summary.json claims a finished run."""
    import os
    import signal

    class Send(pl.Callback):
        def on_train_batch_end(self, trainer, *args, **kwargs):
            if trainer.current_epoch == 1 and signame == "SIGTERM":
                os.kill(os.getpid(), signal.SIGTERM)

    extra = _CtrlCInFinalizer() if signame == "SIGINT" else Send()
    real_trainer = pl.Trainer

    def trainer(*args, callbacks=(), **kwargs):
        return real_trainer(*args, callbacks=[*callbacks, extra], **kwargs)

    monkeypatch.setattr(engine.pl, "Trainer", trainer)
    cfg = _cfg(tmp_path, epochs=50)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        _run(tmp_path, cfg)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # restored
    assert not (tmp_path / "toy" / "results" / "toy_1" / "train_summary.json").exists()
    assert (tmp_path / "toy" / "checkpoints" / "toy_1" / "last.ckpt").is_file()  # resumable


def test_monitor_ema_steers_early_stopping_and_the_best_checkpoint(tmp_path):
    """train.monitor_ema: the logged val_acc_ema is the exponential average of val_acc, and it
    (not the raw metric) is what the summary's best score and the kept checkpoint follow. A run
    resumed after epoch 2 continues the same average."""
    import pandas as pd
    a = 0.6
    _run(tmp_path, _cfg(tmp_path, epochs=2, monitor_ema=a))
    s = _run(tmp_path, _cfg(tmp_path, epochs=4, monitor_ema=a))
    assert s["monitor"] == "val_acc_ema" and s["resumed"] and s["start_epoch"] == 2
    log = pd.read_csv(tmp_path / "toy" / "results" / "toy_1" / "train_logs" / "metrics.csv")
    raw = log.dropna(subset=["val_acc"]).groupby("epoch")["val_acc"].last().to_numpy()
    ema = log.dropna(subset=["val_acc_ema"]).groupby("epoch")["val_acc_ema"].last().to_numpy()
    expected = [raw[0]]
    for x in raw[1:]:
        expected.append(a * expected[-1] + (1 - a) * x)
    np.testing.assert_allclose(ema, expected, rtol=1e-6)
    assert s["best_score"] == pytest.approx(max(expected), rel=1e-6)
    assert s["best_epoch"] == int(np.argmax(expected))
