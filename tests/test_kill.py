"""Killed jobs lose nothing a rerun would trust.

* Writes killed at random points (kill -9, in a loop): a checkpoint, a predictions table and a
  JSON (the metrics / report / manifest path) are either absent or complete, never torn.
* kill -9 during training, then the same call: resumes from the last epoch and ends with the
  planned number of epochs.
* kill -9 of Snakemake itself: while a job it started still works in the folder, the next run
  keeps the lock and prints the exact unlock command; once nothing works there, it removes the
  lock by itself (bioflow.locks).
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bioflow.layout import Layout

pytestmark = pytest.mark.slow  # subprocesses and (tiny) training
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


WRITER = """
import sys
from pathlib import Path
import numpy as np, pandas as pd, torch
from bioflow.io import atomic_path, write_json
from bioflow.training.engine import AtomicCheckpointIO
out, io, i = Path(sys.argv[1]), AtomicCheckpointIO(), 0
print("ready", flush=True)
while True:
    i += 1
    io.save_checkpoint({"epoch": i, "w": torch.full((2_000_000,), float(i))}, out / "last.ckpt")
    with atomic_path(out / "predictions.csv") as tmp:
        pd.DataFrame({"file": [f"img_{k}.tif" for k in range(100_000)], "p": i}).to_csv(tmp, index=False)
        with open(tmp, "a") as f:
            f.write("END\\n")
    write_json(out / "metrics.json", {"i": i, "values": list(range(200_000))})
"""


def test_writes_killed_at_random_points_leave_complete_files_or_none(tmp_path):
    rng = random.Random(0)
    seen = set()
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                                env=_env(), text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        visible = {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")}
        assert visible <= {"last.ckpt", "predictions.csv", "metrics.json"}
        seen |= visible
        if "last.ckpt" in visible:
            ck = torch.load(tmp_path / "last.ckpt", weights_only=True)
            assert bool((ck["w"] == float(ck["epoch"])).all()) and ck["w"].numel() == 2_000_000
        if "predictions.csv" in visible:
            lines = (tmp_path / "predictions.csv").read_text().splitlines()
            assert lines[-1] == "END" and len(lines) == 100_002
        if "metrics.json" in visible:
            assert len(json.loads((tmp_path / "metrics.json").read_text())["values"]) == 200_000
    assert seen, "never killed after a first write: the loop tested nothing"


CHILD_TRAIN = """
import json, sys
sys.path.insert(0, sys.argv[1])
from helpers_stages import call
call(json.load(open(sys.argv[2])), "train", 1)
"""


def test_kill9_during_training_resumes_and_ends_with_the_planned_epochs(make_cfg, pneumonia_folders, tmp_path):
    from helpers_stages import call, prepare
    epochs = 12
    cfg = make_cfg(data={"train": str(pneumonia_folders / "train"), "test": str(pneumonia_folders / "test"),
                         "val_split": 0.25, "patch_size": [28, 28]},
                   model={"architecture": "simple_cnn", "features": [4, 8]},
                   train={"epochs": epochs, "patience": 0, "batch_size": 4, "n_sample_images": 0, "devices": 1})
    prepare(cfg)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    lay = Layout.of(cfg)
    last = Path(lay.best_ckpt(1)).parent / f"{cfg['experiment']['name']}_1" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", CHILD_TRAIN, str(TESTS), str(tmp_path / "cfg.json")],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_after = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.is_file():
            epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]  # atomic: never torn
            if epoch >= 2:
                proc.send_signal(signal.SIGKILL)
                killed_after = epoch
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_after is not None and killed_after < epochs - 1, "training ended before the kill"
    summary_path = Path(lay.run_dir(1)) / "train_summary.json"
    assert not summary_path.exists() and not Path(lay.best_ckpt(1)).exists()  # nothing declared done

    summary = call(cfg, "train", 1)  # the same call again
    assert summary["resumed"] and summary["start_epoch"] >= killed_after + 1
    assert summary["epochs_run"] == epochs and summary["stop_reason"]
    best = torch.load(lay.best_ckpt(1), map_location="cpu", weights_only=False)
    assert best["epoch"] == summary["best_epoch"]
    logged = json.loads(summary_path.read_text())
    assert logged["epochs_run"] == epochs


def test_kill9_of_snakemake_unlocks_by_itself_only_once_nothing_of_it_works_there(tmp_path):
    from bioflow import locks
    from helpers_snakemake import clean_env, snakemake, tiny_demo_config

    cfg_file = tiny_demo_config(tmp_path / "cfg.yaml", {"experiment": {"run_ids": [1]},
                                                        "train": {"epochs": 400}})
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
           "--configfile", str(cfg_file), "--cores", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 900

    def training():  # the training job's process (400 epochs: it outlives this test's checks)
        return [p for p, c in locks.snakemake_processes(tmp_path).items() if ".train.py" in c]
    while time.time() < deadline and proc.poll() is None and not training():
        time.sleep(0.2)
    assert proc.poll() is None and training(), "Snakemake ended (or never trained) before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # Snakemake alone, no chance to clean up: its training job lives on
    proc.wait(timeout=60)
    assert locks.lock_files(tmp_path)
    owner = json.loads((tmp_path / ".snakemake" / "locks" / locks.OWNER).read_text())
    assert owner["pid"] == proc.pid and owner["executor"] == "local"
    orphans = locks.snakemake_processes(tmp_path)
    assert set(training()) <= set(orphans) and proc.pid not in orphans, orphans  # the training job, orphaned

    # the orphaned job still trains in the folder: the lock stays and the exact command is printed
    again = snakemake(tmp_path, cfg_file, "--cores", "1", check=False, timeout=300)
    out = again.stdout + again.stderr
    assert again.returncode != 0 and locks.lock_files(tmp_path)
    line = next(ln for ln in out.splitlines() if ln.startswith("bioflow:") and "--unlock" in ln)
    assert "still working in this folder" in line and all(f"pid {p} " in line for p in orphans), line
    unlock = shlex.split(line.split("remove it with: ", 1)[1].split("  then", 1)[0])
    assert unlock[:2] == ["snakemake", "--unlock"] and str(cfg_file) in unlock

    os.killpg(proc.pid, signal.SIGKILL)  # the orphaned job too (same process group)
    deadline = time.time() + 60
    while locks.snakemake_processes(tmp_path) and time.time() < deadline:
        time.sleep(0.2)
    # nothing of the killed run works there any more: the next run removes the lock by itself
    dry = snakemake(tmp_path, cfg_file, "-n", "--cores", "1")
    assert "bioflow: removed the lock of a killed Snakemake" in dry.stderr, dry.stderr[-3000:]
    assert not locks.lock_files(tmp_path) and "train" in dry.stdout + dry.stderr  # resumes from its last epoch
    # the printed command is a working Snakemake call too
    done = subprocess.run([sys.executable, "-m", *unlock], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slurm
def test_scancel_during_training_then_the_same_command_resumes(cluster, tmp_path):
    """The kill test under the real SLURM test cluster, with scancel as the killer."""
    from helpers_snakemake import (SLURM_PROFILE, SLURM_TEST_ARGS, clean_env, scontrol_jobs, slurm_env, slurm_jobs_in,
                                   snakemake, tiny_demo_config)
    cfg_file = tiny_demo_config(tmp_path / "cfg.yaml", {"experiment": {"run_ids": [1]},
                                                        "train": {"epochs": 400}})
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
           "--configfile", str(cfg_file), "--profile", str(SLURM_PROFILE), *SLURM_TEST_ARGS]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=slurm_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        last = tmp_path / "results" / "demo_pneumonia" / "checkpoints" / "demo_pneumonia_1" / "last.ckpt"
        here = os.path.realpath(tmp_path)
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and not last.is_file():
            time.sleep(0.5)
        assert proc.poll() is None and last.is_file(), "training ended (or never started) before scancel"
        time.sleep(2)  # a few more epochs
        train = [j for j in scontrol_jobs() if j.get("Comment", "").startswith("rule_train")
                 and j["JobState"] == "RUNNING" and os.path.realpath(j.get("WorkDir", "")) == here]
        assert len(train) == 1, train
        subprocess.run(["scancel", train[0]["JobId"]], env=clean_env(), check=True)
        assert proc.wait(timeout=300) != 0  # Snakemake sees the cancelled job fail
    finally:  # on failure: no 400-epoch job left on the cluster the later SLURM tests share
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        left = [j["JobId"] for j in slurm_jobs_in(tmp_path) if j["JobState"] in ("RUNNING", "PENDING")]
        if left:
            subprocess.run(["scancel", *left], env=clean_env(), check=False)
    summary = tmp_path / "results" / "demo_pneumonia" / "results" / "demo_pneumonia_1" / "train_summary.json"
    assert not summary.exists()

    # the same command, shortened: the cancelled job is redone and training resumes
    short = tiny_demo_config(cfg_file, {"experiment": {"run_ids": [1]}, "train": {"epochs": 30}})
    snakemake(tmp_path, short, "--profile", str(SLURM_PROFILE), *SLURM_TEST_ARGS, env=slurm_env(), timeout=900)
    s = json.loads(summary.read_text())
    assert s["resumed"] is True and s["start_epoch"] > 0 and s["epochs_run"] == 30
