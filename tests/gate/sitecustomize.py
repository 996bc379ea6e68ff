"""Test-only: holds a prediction after a given number of units, so a test can kill it there.

Put this folder on PYTHONPATH and set BIOFLOW_TEST_GATE=<dir> with ``<dir>/allow`` holding N:
in every process (also SLURM jobs, which inherit the environment), the prediction units
(segmentation images, classification batches) after the first N wait until ``<dir>/open``
exists. Each unit that passes is appended to ``<dir>/calls``, so the test sees what a rerun
predicted. Without BIOFLOW_TEST_GATE nothing changes.
"""

import importlib.abc
import os
import sys
import time
from pathlib import Path

GATE = os.environ.get("BIOFLOW_TEST_GATE")


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


PATCHES = {"bioflow.inference.segmentation": _segmentation, "bioflow.inference.classification": _classification}


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


if GATE:
    sys.meta_path.insert(0, _Finder())
