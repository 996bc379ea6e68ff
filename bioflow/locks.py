"""A Snakemake lock left by a killed run: removed when provably stale, else the exact unlock command.

Snakemake locks a working directory with ``.snakemake/locks/<n>.{input,output}.lock`` and removes
them when it ends; ``kill -9`` (or a lost login node) leaves them, and the next run stops with a
generic "cannot be locked". The locks say nothing about who wrote them, so the run that takes the
lock records itself beside them (:func:`record_owner`, from the Snakefile's ``onstart``; the record
goes when Snakemake removes the lock folder). The next run (:func:`check`, when the Snakefile is
read) removes the lock only when all of these hold:

* the record exists and names this host (another host's processes cannot be seen from here);
* its process is gone (the pid is not alive with the recorded start time);
* no process on this host whose command line mentions Snakemake works in the folder (another
  Snakemake, or a job the killed one started: a local job outlives a ``kill -9`` of Snakemake);
* for a run on a cluster executor: ``squeue`` answers and lists no job working in the folder
  (SLURM jobs outlive the Snakemake that submitted them).

Otherwise it names what still works there and prints the exact ``snakemake --unlock`` command.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

OWNER = "bioflow_owner.json"  # beside Snakemake's lock files; its `<n>.*.lock` pattern skips it


def _locks(workdir) -> Path:
    return Path(workdir) / ".snakemake" / "locks"


def lock_files(workdir) -> list[Path]:
    d = _locks(workdir)
    return sorted(d.glob("*.lock")) if d.is_dir() else []


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart), or None
    when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name may hold spaces


def record_owner(workdir, executor: str) -> None:
    """Called by the run that holds the lock: who it is, for :func:`check` after a kill."""
    if not lock_files(workdir):  # --nolock: nothing to describe
        return
    pid = os.getpid()
    owner = {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid), "executor": executor}
    tmp = _locks(workdir) / f".{OWNER}.{pid}"
    tmp.write_text(json.dumps(owner))
    os.replace(tmp, _locks(workdir) / OWNER)


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def snakemake_processes(workdir) -> dict[int, str]:
    """pid -> command line of each process on this host, other than this one and its parents,
    that mentions Snakemake and works in ``workdir`` (or below it)."""
    here = os.path.realpath(workdir)
    mine, found = _ancestors(), {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in mine:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            cwd = os.path.realpath(os.readlink(d / "cwd"))
        except OSError:  # gone meanwhile, or not ours to inspect
            continue
        if "snakemake" in cmd and (cwd == here or cwd.startswith(here + os.sep)):
            found[int(d.name)] = cmd
    return found


def slurm_jobs(workdir) -> list[str] | None:
    """Ids of the SLURM jobs working in ``workdir``; None when SLURM cannot be asked."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    here = os.path.realpath(workdir)
    return [job for job, _, wd in (ln.partition(" ") for ln in out.stdout.splitlines())
            if wd.strip() and os.path.realpath(wd.strip()) == here]


def unlock_command(workdir, snakefile, configfiles=()) -> str:
    cmd = ["snakemake", "--unlock", "-s", str(snakefile), "-d", str(workdir)]
    for c in configfiles:
        cmd += ["--configfile", str(c)]
    return shlex.join(cmd)


def check(workdir, snakefile, configfiles=()) -> str | None:
    """None when ``workdir`` holds no lock; else a message for the user: that a stale lock was
    removed, or what may still work there and the exact unlock command (see the module doc)."""
    if not lock_files(workdir):
        return None
    locks = _locks(workdir)
    try:
        owner = json.loads((locks / OWNER).read_text())
    except (OSError, ValueError):
        owner = None
    busy = []  # why the lock may still be in use
    procs = snakemake_processes(workdir)
    if procs:
        busy.append("still working in this folder: " + "; ".join(
            f"pid {pid} ({cmd[:120]})" for pid, cmd in sorted(procs.items())))
    if owner is None:
        busy.append("the lock does not say which run holds it")
    elif owner["host"] != socket.gethostname():
        busy.append(f"the run holding it started on host {owner['host']}; check that no Snakemake runs there")
    elif owner["start"] is not None and _start_time(owner["pid"]) == owner["start"] and owner["pid"] not in procs:
        busy.append(f"the Snakemake that holds it (pid {owner['pid']}) is still running")
    if owner is not None and owner["executor"] != "local":
        jobs = slurm_jobs(workdir)
        if jobs is None:
            busy.append(f"squeue did not answer, so jobs of the {owner['executor']} run may still work here")
        elif jobs:
            busy.append(f"SLURM jobs of the killed run still work in this folder (wait for them, or "
                        f"stop them with: scancel {' '.join(jobs)})")
    if not busy:
        shutil.rmtree(locks, ignore_errors=True)  # what `snakemake --unlock` does
        return (f"bioflow: removed the lock of a killed Snakemake (pid {owner['pid']} on {owner['host']}) "
                f"from {locks}: no Snakemake and none of its jobs works in this folder any more; "
                f"unfinished jobs are redone and training resumes from its last epoch")
    return (f"bioflow: {locks} holds a lock, kept because {'; '.join(busy)}. If no Snakemake is running "
            f"in this folder any more (an earlier run was killed), remove it with: "
            f"{unlock_command(workdir, snakefile, configfiles)}  then run your command again; "
            f"unfinished jobs are redone and training resumes from its last epoch")
