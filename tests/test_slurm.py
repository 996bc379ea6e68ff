"""The demo DAG through a real single-node SLURM cluster with the project's profile.

.ci/slurm_cluster.sh starts slurmctld + slurmd (+ munged) on this machine: partitions `cpu`
(default) and `gpu`, a fake GPU gres. Snakemake runs with `--profile profiles/slurm`
unchanged, plus the options a cluster without slurmdbd needs (squeue for status) and fast
polling. Evidence comes from slurmctld itself (`scontrol show job`; MinJobAge keeps finished
jobs): which rules were submitted, to which partition, with which GPU request, when they ran.
Skips only where the SLURM binaries are absent (.ci/run installs them).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from datetime import datetime

import pandas as pd
import pytest
import yaml

from helpers_snakemake import (SLURM_PROFILE, SLURM_TEST_ARGS, job_counts, local_demo_run, rule_of, scontrol_jobs,
                               slurm_env, snakemake, tiny_demo_config)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

LOCAL_RULES = {"csv_to_folders", "validate_train", "validate_test", "norm_stats", "save_config", "report", "ensemble",
               "all"}
GPU_RULES = {"train", "predict"}


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    local = local_demo_run(tmp_path_factory)
    workdir = tmp_path_factory.mktemp("slurm_run")
    cfg = tiny_demo_config(workdir / "tiny.yaml")
    known = {j["JobId"] for j in scontrol_jobs()}
    t0 = time.time()
    proc = snakemake(workdir, cfg, "--profile", str(SLURM_PROFILE), *SLURM_TEST_ARGS, env=slurm_env(), timeout=900)
    seconds = time.time() - t0
    here = os.path.realpath(workdir)
    jobs = [j for j in scontrol_jobs()
            if j["JobId"] not in known and os.path.realpath(j.get("WorkDir", "")) == here]
    return {"local": local, "workdir": workdir, "root": workdir / "results" / "demo_pneumonia",
            "output": proc.stdout + proc.stderr, "jobs": jobs, "seconds": seconds}


def test_jobs_went_through_sbatch(slurm_run):
    jobs = slurm_run["jobs"]
    submitted = Counter(rule_of(j)[0] for j in jobs)
    # every heavy stage was a SLURM job, one per run_id; the tiny ones stayed on the submit host
    # (the classification ensemble averages two tables on the submit host; its metrics are a job)
    assert submitted == Counter({"train": 2, "predict": 2, "metrics": 3}), slurm_run["output"][-3000:]
    assert not LOCAL_RULES & set(submitted)
    for j in jobs:
        assert j["JobState"] == "COMPLETED" and j["ExitCode"] == "0:0", j
    assert sorted(rule_of(j)[1] for j in jobs if rule_of(j)[0] == "train") == ["1", "2"]
    # Snakemake ran the same DAG as locally
    assert job_counts(slurm_run["output"]) == job_counts(slurm_run["local"]["output"])


def _minutes(limit: str) -> int:
    """SLURM's TimeLimit `[days-]hours:minutes:seconds` in minutes."""
    days, _, hms = limit.rpartition("-")
    h, m, sec = (int(x) for x in hms.split(":"))
    return (int(days or 0) * 24 + h) * 60 + m + (sec > 0)


def test_gpu_stages_asked_for_a_gpu_on_the_gpu_partition(slurm_run):
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    for j in slurm_run["jobs"]:
        rule, _ = rule_of(j)
        gres = j.get("TresPerJob", "") + " " + j.get("TresPerNode", "")
        if rule in GPU_RULES:
            want = profile["set-resources"][rule]
            assert j["Partition"] == want["slurm_partition"] == "gpu", j
            assert re.search(rf"gres[:/]gpu:{want['gpu']}\b", gres), f"{rule}: no GPU requested: {gres!r}"
            assert re.search(rf"gres[:/]gpu:{want['cpus_per_gpu']}\b", j.get("CpusPerTres", "")), j
            assert int(j["NumCPUs"]) == want["gpu"] * want["cpus_per_gpu"], j
        else:
            want = profile["default-resources"]
            assert j["Partition"] == "cpu", j  # the cluster's default partition
            assert "gpu" not in gres, j
        assert j["MinMemoryNode"] == f"{want['mem_mb']}M", j
        assert _minutes(j["TimeLimit"]) == want["runtime"], j


def test_run_ids_trained_in_parallel(slurm_run):
    trains = [j for j in slurm_run["jobs"] if rule_of(j)[0] == "train"]
    spans = [(datetime.fromisoformat(j["StartTime"]), datetime.fromisoformat(j["EndTime"])) for j in trains]
    (s1, e1), (s2, e2) = spans
    assert max(s1, s2) < min(e1, e2), f"train jobs did not overlap: {spans}"


def test_outputs_match_a_local_run(slurm_run):
    local_root, root = slurm_run["local"]["root"], slurm_run["root"]
    for rid in (1, 2):
        run = f"results/demo_pneumonia_{rid}"
        a = pd.read_csv(local_root / run / "predictions.csv")
        b = pd.read_csv(root / run / "predictions.csv")
        assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
        prob = [c for c in a.columns if c.startswith("prob")]
        assert prob, a.columns
        other = [c for c in a.columns if c not in prob]
        pd.testing.assert_frame_equal(a[other], b[other])
        pd.testing.assert_frame_equal(a[prob], b[prob], atol=1e-4, rtol=0)
        ma = json.loads((local_root / run / "metrics.json").read_text())
        mb = json.loads((root / run / "metrics.json").read_text())
        for key in ("accuracy", "balanced_accuracy", "f1_macro"):
            assert mb[key] == pytest.approx(ma[key], abs=1e-6)
    assert (root / "report.html").is_file()


def test_the_bare_profile_name_submits_once_installed(slurm_run, tmp_path):
    """`bioflow profile install slurm`, then `snakemake --profile slurm` as cluster users type it:
    Snakemake finds the installed profile (not the checkout's) and submits through SLURM."""
    from bioflow import cluster_profile
    xdg = tmp_path / "xdg"
    cluster_profile.install("slurm", partition="cpu", gpu_partition="gpu", root=xdg / "snakemake")
    workdir = slurm_run["workdir"]
    known = {j["JobId"] for j in scontrol_jobs()}
    snakemake(workdir, workdir / "tiny.yaml", "--profile", "slurm", "--forcerun", "metrics", *SLURM_TEST_ARGS,
              env=slurm_env(XDG_CONFIG_HOME=xdg))
    here = os.path.realpath(workdir)
    jobs = [j for j in scontrol_jobs() if j["JobId"] not in known and os.path.realpath(j.get("WorkDir", "")) == here]
    assert Counter(rule_of(j)[0] for j in jobs) == {"metrics": 3}
    assert {j["Partition"] for j in jobs} == {"cpu"}
