"""Prediction through the real SLURM test cluster, with the profile as cluster users install it
(`bioflow profile install slurm`, then `snakemake --profile slurm`, the bare name, found in the
user's Snakemake config folder; tests/test_slurm.py runs `--profile profiles/slurm`):

* `inference.shards: 2`: two predict_shard SLURM jobs (slurmctld's own records), gathered into
  the predictions of one local job, byte for byte;
* scancel of a multi-image prediction (segmentation, classification), then the same command:
  the finished images are not predicted again and the outputs equal an uninterrupted run;
* kill -9 of Snakemake while its SLURM job works on: the next run keeps the lock and names the
  job (`scancel <id>`) and the unlock command; once the job is scancelled, the same command
  removes the stale lock by itself and the prediction resumes.

The predictions use checkpoints trained locally in-process (tests/helpers_trained.py; predict-only
experiments), so no training runs on
the cluster. A test-only gate (tests/gate/sitecustomize.py, through the jobs' inherited
environment) holds a prediction after a set number of images or batches: the kill always lands
after some and before all of them were finished, whatever the machine's load.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from bioflow import locks
from helpers_snakemake import (SNAKEFILE, SLURM_TEST_ARGS, clean_env, rule_of,
                               slurm_env, slurm_jobs_in, snakemake)
from helpers_trained import ckpt_of, classification_run, run_dir, segmentation_run  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def xdg(cluster, tmp_path_factory):
    """XDG_CONFIG_HOME holding the profile as `bioflow profile install slurm` writes it."""
    from bioflow import cluster_profile
    root = tmp_path_factory.mktemp("xdg")
    cluster_profile.install("slurm", partition="cpu", gpu_partition="gpu", root=root / "snakemake")
    return root


@pytest.fixture(autouse=True)
def no_job_left(cluster, tmp_path):
    """A failing test leaves no job held by the gate on the cluster."""
    yield
    left = [j["JobId"] for j in slurm_jobs_in(tmp_path) if j["JobState"] in ("RUNNING", "PENDING")]
    if left:
        subprocess.run(["scancel", *left], env=clean_env(), check=False)


def _predict_only(trained: dict, workdir: Path, **inference) -> Path:
    """The locally trained run 1 model on its test set, as a predict-only experiment."""
    cfg = {"experiment": {"name": "again", "workflow": trained["experiment"]["workflow"], "run_ids": [1],
                          "result_dir": "results"},
           "data": {"test": trained["data"]["test"]}, "model": {"checkpoint": ckpt_of(trained)},
           "inference": {**trained["inference"], **inference}, "metrics": {"bootstrap": 0}}
    path = workdir / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _one_local_job(trained: dict, tmp: Path, **inference) -> Path:
    """The run folder of the same prediction in one local job (through the stages)."""
    from bioflow import workflows
    from helpers_stages import call
    cfg = yaml.safe_load(_predict_only(trained, tmp, **inference).read_text())
    cfg["experiment"]["result_dir"] = str(tmp / "results")
    workflows.validate_config(cfg)
    call(cfg, "validate_test")
    call(cfg, "predict", 1)
    return run_dir(cfg, 1)


def _slurm_env(xdg: Path, gate: Path | None = None) -> dict:
    extra = {"XDG_CONFIG_HOME": xdg}
    if gate is not None:
        extra["BIOFLOW_TEST_GATE"] = gate  # tests/gate/sitecustomize.py, on slurm_env's PYTHONPATH
    return slurm_env(**extra)


def _command(workdir: Path, cfg: Path) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir), "--configfile", str(cfg),
            "--profile", "slurm", *SLURM_TEST_ARGS]


def _gate(tmp: Path, allow: int) -> Path:
    gate = tmp / "gate"
    gate.mkdir()
    (gate / "allow").write_text(str(allow))
    return gate


def _calls(gate: Path) -> list[str]:
    f = gate / "calls"
    return f.read_text().splitlines() if f.exists() else []


def _records(workdir: Path) -> list[Path]:
    return sorted((workdir / "results").glob("**/.predict_done/*/*.json"))


def _held_predict_job(proc, workdir: Path, gate: Path, allow: int, known: set) -> dict:
    """Wait until the prediction (a SLURM job) finished ``allow`` units and is held by the gate."""
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        running = [j for j in slurm_jobs_in(workdir, known) if j["JobState"] == "RUNNING" and rule_of(j)[0] == "predict"]
        if running and len(_calls(gate)) == allow and len(_records(workdir)) == allow:
            return running[0]
        time.sleep(0.5)
    raise AssertionError(f"the prediction never reached the gate (snakemake rc {proc.poll()}, calls {_calls(gate)})")


def test_sharded_prediction_is_one_slurm_job_per_shard_and_equals_one_local_job(classification_run, xdg,
                                                                                  tmp_path):
    # 8 test images in prediction batches of 4 (inference.batch_size 1 x 4): two shards of 4
    (tmp_path / "one").mkdir()
    want = _one_local_job(classification_run, tmp_path / "one", batch_size=1)
    (tmp_path / "slurm").mkdir()
    workdir = tmp_path / "slurm"
    cfg = _predict_only(classification_run, workdir, batch_size=1, shards=2)
    t0 = time.time()
    proc = snakemake(workdir, cfg, "--profile", "slurm", *SLURM_TEST_ARGS, env=_slurm_env(xdg), timeout=1800)
    seconds = time.time() - t0
    jobs = slurm_jobs_in(workdir)
    assert Counter(rule_of(j)[0] for j in jobs) == {"predict_shard": 2, "metrics": 1}, proc.stderr[-3000:]
    shards = [j for j in jobs if rule_of(j)[0] == "predict_shard"]
    assert sorted(rule_of(j)[1] for j in shards) == ["1_0", "1_1"]
    for j in jobs:
        assert j["JobState"] == "COMPLETED" and j["ExitCode"] == "0:0", j
    assert {j["Partition"] for j in shards} == {"gpu"}  # the installed profile's GPU partition
    got = workdir / "results" / "again" / "results" / "again_1"
    assert (got / "predictions.csv").read_bytes() == (want / "predictions.csv").read_bytes()
    assert len(pd.read_csv(got / "predictions.csv")) == 8 and (got / "metrics.json").is_file()
    print(f"sharded SLURM prediction: {seconds:.0f} s")


@pytest.mark.parametrize("workflow", ["semantic_segmentation", "classification"])
def test_scancel_during_prediction_then_the_same_command_predicts_only_the_rest(workflow, request, xdg, tmp_path):
    trained = request.getfixturevalue("classification_run" if workflow == "classification" else "segmentation_run")
    if workflow == "classification":  # 8 images in batches of 4
        extra, allow, total = {"batch_size": 1}, 1, 2
    else:  # 4 images
        extra, allow, total = {}, 2, 4
    (tmp_path / "one").mkdir()
    want = _one_local_job(trained, tmp_path / "one", **extra)
    cfg = _predict_only(trained, tmp_path, **extra)
    gate = _gate(tmp_path, allow)
    known = {j["JobId"] for j in slurm_jobs_in(tmp_path)}
    proc = subprocess.Popen(_command(tmp_path, cfg), cwd=tmp_path, env=_slurm_env(xdg, gate), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        job = _held_predict_job(proc, tmp_path, gate, allow, known)
        subprocess.run(["scancel", job["JobId"]], env=clean_env(), check=True)
        assert proc.wait(timeout=300) != 0  # Snakemake sees the cancelled job fail
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    rd = tmp_path / "results" / "again" / "results" / "again_1"
    assert not (rd / "predictions.csv").exists() and len(_records(tmp_path)) == allow

    (gate / "open").touch()
    snakemake(tmp_path, cfg, "--profile", "slurm", *SLURM_TEST_ARGS, env=_slurm_env(xdg, gate), timeout=1800)
    rerun = _calls(gate)[allow:]
    assert len(rerun) == total - allow, rerun  # only what the cancelled job had not finished
    assert "not predicted again" in (tmp_path / "results" / "again" / "logs" / "predict_1.log").read_text()
    assert not _records(tmp_path)
    if workflow == "classification":
        assert (rd / "predictions.csv").read_bytes() == (want / "predictions.csv").read_bytes()
    else:
        assert not set(rerun) & set(_calls(gate)[:allow])
        def images(d):  # not Snakemake's `.snakemake_timestamp` of a directory() output
            return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))
        names = images(want / "per_image")
        assert images(rd / "per_image") == names and len(names) == total
        for n in names:
            assert np.array_equal(tifffile.imread(rd / "per_image" / n), tifffile.imread(want / "per_image" / n))


def test_kill9_of_snakemake_while_its_slurm_job_runs_then_scancel_then_the_same_command(classification_run, xdg,
                                                                                         tmp_path):
    (tmp_path / "one").mkdir()
    want = _one_local_job(classification_run, tmp_path / "one", batch_size=1) / "predictions.csv"
    cfg = _predict_only(classification_run, tmp_path, batch_size=1)  # 8 images in batches of 4
    gate = _gate(tmp_path, 1)
    env = _slurm_env(xdg, gate)
    proc = subprocess.Popen(_command(tmp_path, cfg), cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        job = _held_predict_job(proc, tmp_path, gate, 1, set())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # Snakemake (and what runs locally), no chance to clean up
        proc.wait(timeout=60)
    assert locks.lock_files(tmp_path)

    # the SLURM job outlives Snakemake and still works in the folder: the lock stays
    again = snakemake(tmp_path, cfg, "--profile", "slurm", *SLURM_TEST_ARGS, env=env, check=False, timeout=300)
    line = next(ln for ln in (again.stdout + again.stderr).splitlines() if ln.startswith("bioflow:") and "--unlock" in ln)
    assert again.returncode != 0 and f"scancel {job['JobId']}" in line, line
    assert locks.lock_files(tmp_path)

    subprocess.run(["scancel", job["JobId"]], env=clean_env(), check=True)  # the killer
    deadline = time.time() + 120
    while (locks.slurm_jobs(tmp_path) or locks.snakemake_processes(tmp_path)) and time.time() < deadline:
        time.sleep(0.5)
    (gate / "open").touch()
    done = snakemake(tmp_path, cfg, "--profile", "slurm", *SLURM_TEST_ARGS, env=env, timeout=1800)
    assert "bioflow: removed the lock of a killed Snakemake" in done.stderr
    assert len(_calls(gate)) == 2  # the rerun predicted the batch the killed run had not finished
    assert (tmp_path / "results" / "again" / "results" / "again_1" / "predictions.csv").read_bytes() == want.read_bytes()
    assert not locks.lock_files(tmp_path)
