"""Helpers for tests that run the real Snakefile: tiny demo configs, running Snakemake in a
subprocess, reading which jobs a (dry) run schedules, and the test SLURM cluster.

The tiny demo run (demo config, 1 epoch, two run_ids) is made once per test run and shared by
tests/test_dag.py and tests/test_slurm.py (also across pytest-xdist workers) through
:func:`local_demo_run`.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
DEMO_CONFIG = REPO / "config" / "config.yaml"
SLURM_PROFILE = REPO / "profiles" / "slurm"
CLUSTER_SCRIPT = REPO / ".ci" / "slurm_cluster.sh"
SLURM_BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol", "srun")

SHIMS = REPO / "tests" / "gate"  # test-only sitecustomize (see its docstring)

# Fast status polling for the test cluster (no slurmdbd there, hence squeue); with slurm_env.
SLURM_TEST_ARGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
                   "--slurm-keep-successful-logs"]
SLURM_POLL_SECONDS = 2


def deep_update(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def tiny_demo_config(path: Path, overrides: dict | None = None) -> Path:
    """config/config.yaml made tiny (1 epoch, two run_ids, no bootstrap) and written to ``path``.

    Data paths become absolute because the runs happen in a temporary working directory.
    """
    cfg = yaml.safe_load(DEMO_CONFIG.read_text())
    for key in ("csv", "train", "val", "test"):
        if cfg["data"].get(key):
            cfg["data"][key] = str(REPO / cfg["data"][key])
    cfg = deep_update(cfg, {"experiment": {"run_ids": [1, 2]},
                            "train": {"epochs": 1, "patience": 0, "n_sample_images": 1},
                            "metrics": {"bootstrap": 0}})
    cfg = deep_update(cfg, overrides or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def clean_env(**extra) -> dict:
    """os.environ without SLURM job variables (a test may itself run inside a SLURM job)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def slurm_env(**extra) -> dict:
    """clean_env for a Snakemake run with the SLURM executor: the test shim caps the plugin's
    status-check interval at SLURM_POLL_SECONDS (it grows to minutes while jobs run; only the
    polling cadence changes, the jobs still go through the real sbatch / squeue / scancel)."""
    env = clean_env(**extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SHIMS), str(REPO), env.get("PYTHONPATH")) if p)
    env["BIOFLOW_TEST_SLURM_POLL"] = str(SLURM_POLL_SECONDS)
    return env


def snakemake(workdir: Path, configfile: Path, *args: str, prelude: str | None = None,
              timeout: float = 900, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``snakemake -s Snakefile -d workdir --configfile configfile *args`` in a subprocess.

    ``prelude``: Python code executed in the Snakemake process before the Snakefile is read
    (e.g. to make ``bioflow.__version__`` what an upgraded installation would report).
    """
    head = [sys.executable, "-m", "snakemake"]
    if prelude:
        head = [sys.executable, "-c", prelude + "\nimport sys\nfrom snakemake.cli import main\n"
                "sys.argv[0] = 'snakemake'\nmain()"]
    cmd = [*head, "-s", str(SNAKEFILE), "-d", str(workdir), "--configfile", str(configfile), *args]
    proc = subprocess.run(cmd, cwd=workdir, env=env or clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}): {' '.join(cmd)}\n"
                             f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-12000:]}")
    return proc


_STATS = re.compile(r"^Job stats:\s*\n.*?\n-+\s+-+\s*\n(.*?)^total\s+\d+", re.S | re.M)


def job_counts(output: str) -> Counter:
    """Rules and job counts from the "Job stats" table Snakemake prints before running (or in a
    dry run); ``all`` left out. Empty when Snakemake has nothing to do."""
    if "Nothing to be done" in output:
        return Counter()
    m = _STATS.search(output)
    if m is None:
        raise AssertionError(f"no 'Job stats' table in Snakemake's output:\n{output[-4000:]}")
    counts = Counter()
    for line in m.group(1).strip().splitlines():
        rule, n = line.split()
        if rule != "all":
            counts[rule] = int(n)
    return counts


def planned_jobs(workdir: Path, configfile: Path, *args: str, prelude: str | None = None) -> Counter:
    """What ``snakemake -n`` would run now, as {rule: number of jobs}."""
    proc = snakemake(workdir, configfile, "-n", "--cores", "2", *args, prelude=prelude)
    return job_counts(proc.stdout + proc.stderr)


def shared_tmp(tmp_path_factory) -> Path:
    """A folder of this test run that every pytest-xdist worker sees (each worker's own basetemp
    is a subfolder of it); the session's basetemp without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock across processes (pytest-xdist workers) while the block runs."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_LOCAL_RUN: dict = {}


def local_demo_run(tmp_path_factory) -> dict:
    """The tiny demo DAG run once locally (``--cores 2``); once per test run, also when
    pytest-xdist workers share it (the first one makes it, the others wait and read it).

    Returns ``{"workdir", "config", "root", "output", "seconds"}``; ``root`` is the
    experiment's output folder.
    """
    if "workdir" not in _LOCAL_RUN:
        tmp_root = shared_tmp(tmp_path_factory)
        workdir = tmp_root / "local_run"
        record = tmp_root / "local_run.json"  # written once the run succeeded
        with file_lock(tmp_root / "local_run.lock"):
            if not record.exists():
                workdir.mkdir(parents=True, exist_ok=True)
                cfg = tiny_demo_config(workdir / "tiny.yaml")
                t0 = time.time()
                proc = snakemake(workdir, cfg, "--cores", "2")
                record.write_text(json.dumps({"output": proc.stdout + proc.stderr, "seconds": time.time() - t0}))
        cfg = workdir / "tiny.yaml"
        name = yaml.safe_load(cfg.read_text())["experiment"]["name"]
        _LOCAL_RUN.update(workdir=workdir, config=cfg, root=workdir / "results" / name,
                          **json.loads(record.read_text()))
    return _LOCAL_RUN


# --- the test SLURM cluster ----------------------------------------------------------------

def slurm_missing() -> list[str]:
    return [b for b in SLURM_BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]


def start_slurm_cluster() -> bool:
    """Start the single-node cluster of .ci/slurm_cluster.sh; False when it was already up."""
    proc = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True,
                          timeout=120, env=clean_env())
    if proc.returncode != 0:
        raise AssertionError(f".ci/slurm_cluster.sh start failed:\n{proc.stdout}\n{proc.stderr}")
    return "already running" not in proc.stdout


def stop_slurm_cluster() -> None:
    subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop"], capture_output=True, text=True, timeout=60,
                   env=clean_env())


def slurm_cluster_fixture():
    """Body of the session-scoped `cluster` fixture (tests/conftest.py): skip without SLURM,
    start the cluster, and stop it afterwards if this session started it."""
    import pytest

    missing = slurm_missing()
    if missing:
        pytest.skip(f"SLURM binaries not found ({', '.join(missing)}); "
                    "apt-get install -y slurmctld slurmd slurm-client munge (.ci/run does)")
    started = start_slurm_cluster()
    if started:
        # A fresh cluster knows no job; one recovered from an earlier run could hold the node.
        stale = [j["JobId"] for j in scontrol_jobs()]
        assert not stale, f"the freshly started test cluster already knows jobs {stale}"
    yield
    if started:
        stop_slurm_cluster()


def scontrol_jobs() -> list[dict]:
    """Every job slurmctld still knows (MinJobAge=3600 keeps finished ones), as field dicts."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True,
                         env=clean_env(), check=True).stdout
    jobs = []
    for line in out.splitlines():
        if not line.strip() or line.startswith("No jobs"):
            continue
        fields = {}
        # `Key=value` pairs separated by spaces; values have no spaces except Comment's
        # (the plugin's comments have none either).
        for tok in line.split():
            if "=" in tok:
                k, _, v = tok.partition("=")
                fields[k] = v
        jobs.append(fields)
    return jobs


def rule_of(job: dict) -> tuple[str, str]:
    """(rule, wildcards) of a SLURM job, from the plugin's `--comment rule_<name>[_wildcards_<values>]`."""
    m = re.fullmatch(r"rule_(.+?)(?:_wildcards_(.*))?", job.get("Comment", ""))
    assert m, f"SLURM job {job['JobId']} has no Snakemake rule comment: {job.get('Comment')!r}"
    return m.group(1), m.group(2) or ""


def slurm_jobs_in(workdir: Path, known: set | frozenset = frozenset()) -> list[dict]:
    """The jobs slurmctld knows that work in ``workdir``, except the ids in ``known``."""
    here = os.path.realpath(workdir)
    return [j for j in scontrol_jobs() if j["JobId"] not in known and os.path.realpath(j.get("WorkDir", "")) == here]
