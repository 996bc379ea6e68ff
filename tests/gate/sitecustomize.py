"""Test-only hooks for the processes the tests start (Snakemake, and the SLURM jobs, which
inherit the environment). Each is off unless its variable is set; without them nothing changes.

* BIOFLOW_TEST_GATE=<dir>: holds a prediction after a given number of units, so a test can kill
  it there. ``<dir>/allow`` holds N: in every process, the prediction units (segmentation
  images, classification batches) after the first N wait until ``<dir>/open`` exists. Each unit
  that passes is appended to ``<dir>/calls``, so the test sees what a rerun predicted.
* BIOFLOW_TEST_SLURM_POLL=<seconds>: caps the SLURM executor plugin's interval between two
  status checks (it grows by 10 s after every check where no job finished, up to 180 s, so a
  40-s job was noticed a minute late). Polling cadence only: the jobs still go through the real
  sbatch / squeue / scancel.

Put this folder on PYTHONPATH (tests/helpers_snakemake.py: slurm_env) and set the variables.
"""

import importlib.abc
import os
import sys
import time
from pathlib import Path

GATE = os.environ.get("BIOFLOW_TEST_GATE")
SLURM_POLL = os.environ.get("BIOFLOW_TEST_SLURM_POLL")


def _pass(unit: str) -> None:
    d = Path(GATE)
    calls = d / "calls"
    done = len(calls.read_text().splitlines()) if calls.exists() else 0
    while done >= int((d / "allow").read_text()) and not (d / "open").exists():
        time.sleep(0.2)  # held here until killed (or opened)
    with open(calls, "a") as f:
        f.write(unit + "\n")


def _segmentation(module):
    real = module.predict_image

    def predict_image(entry, *args, **kwargs):
        _pass(Path(entry["path"]).name)
        return real(entry, *args, **kwargs)
    module.predict_image = predict_image


def _classification(module):
    real = module.iter_proba

    def iter_proba(*args, **kwargs):
        for p in real(*args, **kwargs):
            _pass(f"batch of {len(p)}")  # computed, but recorded only once it passes
            yield p
    module.iter_proba = iter_proba


def _slurm_poll(module):
    # snakemake-executor-plugin-slurm sets this after every status check (the base class,
    # snakemake_interface_executor_plugins' RemoteExecutor, sleeps for it); clamp what it sets.
    cap = float(SLURM_POLL)
    prop = module.Executor.next_seconds_between_status_checks

    def setter(self, value):
        prop.fset(self, value if value is None else min(value, cap))
    module.Executor.next_seconds_between_status_checks = property(prop.fget, setter)


PATCHES = {}
if GATE:
    PATCHES.update({"bioflow.inference.segmentation": _segmentation,
                    "bioflow.inference.classification": _classification})
if SLURM_POLL:
    PATCHES["snakemake_executor_plugin_slurm"] = _slurm_poll


class _Finder(importlib.abc.MetaPathFinder):
    """Patches the modules above right after they are first imported."""

    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                break
        else:
            return None
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            PATCHES[name](module)
        spec.loader.exec_module = exec_module
        return spec


if PATCHES:
    sys.meta_path.insert(0, _Finder())
