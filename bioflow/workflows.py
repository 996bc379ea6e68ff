"""Dispatch from ``experiment.workflow`` to the module implementing a stage for it.

One table per stage keeps the Snakemake scripts workflow-agnostic; modules are imported
lazily so that `snakemake -n` and the light stages never import torch.
"""

from __future__ import annotations

import importlib

from bioflow.errors import BioflowError

# stage -> workflow -> "module:function"
STAGES = {
    "train": {
        "classification": "bioflow.training.classification:train",
        "semantic_segmentation": "bioflow.training.segmentation:train",
    },
    "predict": {
        "classification": "bioflow.inference.classification:predict",
        "semantic_segmentation": "bioflow.inference.segmentation:predict",
    },
    "metrics": {
        "classification": "bioflow.metrics.classification:evaluate",
        "semantic_segmentation": "bioflow.metrics.segmentation:evaluate",
    },
}


def stage_function(stage: str, workflow: str):
    try:
        target = STAGES[stage][workflow]
    except KeyError:
        valid = sorted(STAGES.get(stage, {}))
        raise BioflowError(f"experiment.workflow: '{workflow}' has no '{stage}' stage yet; "
                           f"available: {', '.join(valid)}") from None
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)
