"""Shared helpers of the benchmarks: templates, the machine line, interleaved timing, ``--set``
overrides."""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def set_overrides(items: list[str]) -> dict:
    """``--set section.key=yaml_value`` items (exploration runs) as one nested dict, merged in
    order (a later item wins; a dict value merges into what earlier items set)."""
    from bioflow.config import deep_update
    out: dict = {}
    for item in items:
        key, val = item.split("=", 1)
        *parents, leaf = key.split(".")
        node: dict = {leaf: yaml.safe_load(val)}
        for p in reversed(parents):
            node = {p: node}
        out = deep_update(out, node)
    return out


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="folder of the datasets (default: ../shared/data)")
    p.add_argument("--out", type=Path, required=True, help="folder for the outputs of this run")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (the minimum counts)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    return p


def device(args) -> torch.device:
    """``--device`` as a ``torch.device`` (auto: cuda when available, else cpu)."""
    if args.device == "auto":
        from bioflow.models.device import pick_device  # the stages' own choice
        return pick_device("benchmark")
    return torch.device(args.device)


def sync() -> None:
    """Wait for queued GPU work: a timed call ends when its kernels have run, not when they were queued."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def template(name: str, **sections) -> dict:
    """The validated config of ``config/templates/<name>.yaml`` with ``sections`` merged in."""
    from bioflow.config import validate
    cfg = yaml.safe_load((REPO / "config" / "templates" / f"{name}.yaml").read_text())
    for sec, values in sections.items():
        cfg.setdefault(sec, {})
        cfg[sec] = {**cfg[sec], **copy.deepcopy(values)}
    cfg["data"] = {**cfg["data"], "train": "unused", "test": None}
    return validate(cfg)


def machine() -> str:
    from bioflow.models.precision import cpu_has_native_bf16
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = (f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})" if torch.cuda.is_available() else "no GPU")
    return (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads, native bf16 {cpu_has_native_bf16()}, {gpu}, python {sys.version.split()[0]}")


def header(args) -> None:
    print("machine:", machine())
    print("command:", "python " + " ".join(sys.argv))
    print("load average at start:", " ".join(f"{v:.2f}" for v in os.getloadavg()))


def best_of(fns: dict, reps: int) -> dict:
    """Minimum wall time of each function over ``reps`` rounds, interleaved (round r runs every
    function once) so a change in machine load hits all of them alike; one untimed warm-up round first."""
    for fn in fns.values():  # warm-up: oneDNN / cuDNN pick their kernels on the first call of a shape
        fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}
