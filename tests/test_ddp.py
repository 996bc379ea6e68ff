"""Multi-device training: Lightning DDP through bioflow's engine (`bioflow.training.engine.fit`).

A CPU machine runs DDP with 2 processes (gloo). tests/ddp_driver.py trains a tiny model with
`train.devices: 2, strategy: ddp`; every rank records what it saw. Checked:
- locally: Lightning launches the second rank itself; the data is split between the ranks;
  one checkpoint and one summary come out (rank 0 writes them);
- on the test SLURM cluster, the two ways a job gets its ranks:
  `srun --ntasks-per-node=2` (SLURM starts both ranks, Lightning's SLURMEnvironment reads
  SLURM_PROCID), and one task holding all devices, which is how the Snakemake SLURM executor
  runs every job (`srun -n1`): both ranks must still train.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers_snakemake import REPO, clean_env

DRIVER = REPO / "tests" / "ddp_driver.py"
N_TRAIN, EPOCHS = 64, 2  # ddp_driver's data and epochs


def run_driver(out: Path, prefix: list[str] = (), timeout: float = 300) -> list[dict]:
    cmd = [*prefix, sys.executable, str(DRIVER), str(out), "2", "ddp"]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    assert ranks, f"no rank reported:\n{proc.stderr[-4000:]}"
    return ranks


def check_two_ranks_one_checkpoint(out: Path, ranks: list[dict]) -> None:
    assert sorted(r["global_rank"] for r in ranks) == [0, 1], ranks
    assert all(r["world_size"] == 2 and r["strategy"] == "DDPStrategy" for r in ranks), ranks
    assert len({r["pid"] for r in ranks}) == 2
    # DistributedSampler: each rank trained on its half of the data every epoch
    assert [r["samples_seen"] for r in ranks] == [N_TRAIN // 2 * EPOCHS] * 2, ranks
    ckpts = list((out / "checkpoints").glob("*-best.ckpt"))
    assert [p.name for p in ckpts] == ["ddp_1-best.ckpt"]
    state = torch.load(ckpts[0], map_location="cpu", weights_only=True)["state_dict"]
    assert set(state) == {"model.weight", "model.bias"}
    summary = json.loads((out / "run" / "train_summary.json").read_text())
    assert summary["epochs_run"] >= EPOCHS - 1 and summary["best_checkpoint"].endswith("ddp_1-best.ckpt")


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    ranks = run_driver(tmp_path)
    check_two_ranks_one_checkpoint(tmp_path, ranks)
    assert {r["cluster_environment"] for r in ranks} == {"LightningEnvironment"}


@pytest.mark.slurm
@pytest.mark.slow
def test_ddp_ranks_started_by_srun(cluster, tmp_path):
    ranks = run_driver(tmp_path, ["srun", "-p", "gpu", "--gpus=2", "-N1", "--ntasks-per-node=2", "-c1"])
    check_two_ranks_one_checkpoint(tmp_path, ranks)
    assert {r["cluster_environment"] for r in ranks} == {"SLURMEnvironment"}
    assert sorted(r["slurm_procid"] for r in ranks) == ["0", "1"]
    assert len({r["slurm_job_id"] for r in ranks}) == 1


@pytest.mark.slurm
@pytest.mark.slow
def test_ddp_in_one_srun_task_like_snakemake_jobs(cluster, tmp_path):
    # The Snakemake SLURM executor wraps each job in `srun -n1` on an allocation holding all
    # requested GPUs; Lightning must then launch the ranks itself rather than take SLURM's
    # single task as the whole world (which trains one rank on half of the data).
    ranks = run_driver(tmp_path, ["srun", "-p", "gpu", "--gpus=2", "-n1", "-c2"])
    check_two_ranks_one_checkpoint(tmp_path, ranks)
    assert all(r["slurm_job_id"] for r in ranks)
