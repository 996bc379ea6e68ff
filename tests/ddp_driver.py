"""Train a tiny model through ``bioflow.training.engine.fit`` with ``train.devices`` ranks.

Run as a script (Lightning's DDP launcher re-executes this file for every extra rank, so it
cannot run inside pytest): ``python tests/ddp_driver.py OUT_DIR DEVICES STRATEGY``.
Every rank writes ``OUT_DIR/rank<global_rank>.json`` with what it saw (world size, the
cluster environment Lightning picked, the SLURM task it ran in); rank 0 also gets the
checkpoint and ``train_summary.json`` from ``fit``. Used by tests/test_ddp.py, locally and
under ``srun`` on the test SLURM cluster.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from bioflow.config import validate
from bioflow.training.engine import BioflowModule, fit


class RankProbe(BioflowModule):
    """BioflowModule that records, per rank, the distributed setup it trained under."""

    def __init__(self, *args, probe_dir: str, **kwargs):
        super().__init__(*args, **kwargs)
        self._probe_dir = Path(probe_dir)
        self._seen = 0

    def training_step(self, batch, batch_idx):
        self._seen += int(batch[0].shape[0])
        return super().training_step(batch, batch_idx)

    def on_train_end(self):
        t = self.trainer
        env = t.strategy.cluster_environment if hasattr(t.strategy, "cluster_environment") else None
        info = {"global_rank": t.global_rank, "world_size": t.world_size,
                "strategy": type(t.strategy).__name__,
                "cluster_environment": type(env).__name__ if env is not None else None,
                "samples_seen": self._seen, "pid": os.getpid(),
                "slurm_procid": os.environ.get("SLURM_PROCID"),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
        (self._probe_dir / f"rank{t.global_rank}.json").write_text(json.dumps(info))


class TinyData(pl.LightningDataModule):
    def __init__(self, n=64, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 4, generator=g)
        y = (x[:, 0] > 0).long()
        self.train_dataset = TensorDataset(x, y)
        self.val_dataset = TensorDataset(x[:16], y[:16])

    def train_dataloader(self):
        return DataLoader(self.train_dataset, batch_size=8, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_dataset, batch_size=8)


def main(out_dir: str, devices: str, strategy: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = validate({"experiment": {"name": "ddp", "workflow": "classification", "run_ids": [1]},
                    "data": {"train": str(out)}, "model": {"architecture": "linear"},
                    "train": {"epochs": 2, "patience": 0, "optimizer": "adam", "lr": 1e-2,
                              "weight_decay": 0.0, "scheduler": "none", "warmup_epochs": 0,
                              "precision": "32", "n_sample_images": 0, "num_workers": 0,
                              "devices": int(devices) if devices.isdigit() else devices,
                              "strategy": strategy}})
    torch.manual_seed(0)
    module = RankProbe(torch.nn.Linear(4, 2), torch.nn.functional.cross_entropy, cfg["train"],
                       hparams={"cfg": cfg}, probe_dir=str(out))
    fit(cfg, 1, module, TinyData(), out / "checkpoints" / "ddp_1-best.ckpt", out / "run")


if __name__ == "__main__":
    main(*sys.argv[1:4])
