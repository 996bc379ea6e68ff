"""bioflow.locks: a Snakemake lock is removed only when provably stale; otherwise the reason and
the exact unlock command. (The end-to-end kill -9 of Snakemake is in tests/test_kill.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from bioflow import locks


def _locked(workdir, **owner):
    d = workdir / ".snakemake" / "locks"
    d.mkdir(parents=True)
    (d / "0.input.lock").write_text(f"{workdir}/in.txt\n")
    (d / "0.output.lock").write_text(f"{workdir}/out.txt\n")
    if owner:
        (d / locks.OWNER).write_text(json.dumps(owner))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.DEVNULL)
    p.wait()
    return p.pid


def test_no_lock_no_message(tmp_path):
    assert locks.check(tmp_path, "Snakefile") is None
    (tmp_path / ".snakemake" / "locks").mkdir(parents=True)  # an empty folder is no lock
    assert locks.check(tmp_path, "Snakefile") is None


def test_a_dead_local_run_on_this_host_is_unlocked(tmp_path):
    pid = _dead_pid()
    _locked(tmp_path, host=socket.gethostname(), pid=pid, start="1", executor="local")
    msg = locks.check(tmp_path, "Snakefile", ["my.yaml"])
    assert msg.startswith("bioflow: removed the lock") and f"pid {pid}" in msg
    assert not locks.lock_files(tmp_path)


@pytest.mark.parametrize("case, reason", [
    ("no owner", "does not say which run holds it"),
    ("other host", "started on host elsewhere.example"),
    ("alive", "is still running"),
    ("slurm, squeue missing", "squeue did not answer"),
    ("slurm job left", "scancel 4242 4243"),
])
def test_a_lock_that_may_be_in_use_stays_and_the_command_is_printed(tmp_path, monkeypatch, case, reason):
    me = {"host": socket.gethostname(), "pid": _dead_pid(), "start": "1", "executor": "local"}
    if case == "other host":
        me["host"] = "elsewhere.example"
    if case == "alive":  # this very process, with its real start time
        me.update(pid=os.getpid(), start=locks._start_time(os.getpid()))
        monkeypatch.setattr(locks, "_ancestors", lambda: set())
    if case.startswith("slurm"):
        me["executor"] = "slurm"
        monkeypatch.setattr(locks, "slurm_jobs",
                            lambda wd: None if case == "slurm, squeue missing" else ["4242", "4243"])
    _locked(tmp_path, **({} if case == "no owner" else me))
    msg = locks.check(tmp_path, "/repo/Snakefile", ["my.yaml"])
    assert reason in msg, msg
    assert msg.endswith("training resumes from its last epoch")
    assert f"snakemake --unlock -s /repo/Snakefile -d {tmp_path} --configfile my.yaml" in msg
    assert len(locks.lock_files(tmp_path)) == 2


def test_a_process_mentioning_snakemake_in_the_folder_keeps_the_lock(tmp_path):
    _locked(tmp_path, host=socket.gethostname(), pid=_dead_pid(), start="1", executor="local")
    job = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)",
                            ".snakemake/scripts/train.py"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, text=True)
    try:
        # Popen may return while the child is still inside exec (vfork), its /proc/<pid>/cmdline
        # still empty: check once it runs (failed that way under a parallel test run)
        assert job.stdout.readline() == "up\n"
        msg = locks.check(tmp_path, "Snakefile")
        assert f"pid {job.pid} (" in msg and "still working in this folder" in msg
        assert locks.lock_files(tmp_path)
    finally:
        job.kill()
        job.wait()
        job.stdout.close()
    assert locks.check(tmp_path, "Snakefile").startswith("bioflow: removed the lock")


def test_the_owner_is_recorded_only_beside_a_lock(tmp_path):
    (tmp_path / ".snakemake" / "locks").mkdir(parents=True)
    locks.record_owner(tmp_path, "slurm")  # --nolock: no lock files
    assert not (tmp_path / ".snakemake" / "locks" / locks.OWNER).exists()
    (tmp_path / ".snakemake" / "locks" / "0.input.lock").write_text("x\n")
    locks.record_owner(tmp_path, "slurm")
    owner = json.loads((tmp_path / ".snakemake" / "locks" / locks.OWNER).read_text())
    assert owner == {"host": socket.gethostname(), "pid": os.getpid(), "start": locks._start_time(os.getpid()),
                     "executor": "slurm"}
