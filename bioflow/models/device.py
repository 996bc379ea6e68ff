"""Which device a stage runs on: the GPU when one is usable, else the CPU, with a warning when
the job asked for a GPU it did not get (a CPU run is many times slower: better to know)."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# set by the CUDA runtime's user and by SLURM when a job was given GPUs
_GPU_VARS = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")


def gpu_requested() -> str | None:
    """The environment variable that asks for a GPU (``NAME=value``), or None. An empty,
    ``-1`` or ``0``-count value hides GPUs on purpose."""
    for var in _GPU_VARS:
        value = os.environ.get(var, "").strip()
        if value and value not in ("-1", "NoDevFiles") and not (var == "SLURM_GPUS_ON_NODE" and value == "0"):
            return f"{var}={value}"
    return None


def pick_device(stage: str):
    """``torch.device`` for ``stage``: cuda when usable, else cpu (warning if a GPU was asked)."""
    import torch  # callers have it loaded already
    if torch.cuda.is_available():
        return torch.device("cuda")
    why = gpu_requested()
    if why:
        log.warning("%s: a GPU was requested (%s) but none is usable (driver, CUDA build of torch?); "
                    "running on the CPU, which is much slower", stage, why)
    return torch.device("cpu")
