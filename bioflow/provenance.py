"""What produced a result: bioflow's and its main libraries' versions, recorded per run
(train_summary.json) and in the report, so a figure can be traced back and reproduced."""

from __future__ import annotations

import platform
import sys

from bioflow import __version__

LIBRARIES = ("numpy", "torch", "pytorch_lightning", "timm", "segmentation_models_pytorch", "torchmetrics",
             "sklearn", "snakemake")


def library_versions() -> dict[str, str]:
    """Versions of bioflow, Python and the libraries above that are installed (imported ones
    only cost a lookup; the others are not imported, their distribution metadata is read)."""
    from importlib import metadata
    dist = {"sklearn": "scikit-learn", "pytorch_lightning": "pytorch-lightning",
            "segmentation_models_pytorch": "segmentation-models-pytorch"}
    out = {"bioflow": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for mod in LIBRARIES:
        if mod in sys.modules and getattr(sys.modules[mod], "__version__", None):
            out[mod] = str(sys.modules[mod].__version__)
            continue
        try:
            out[mod] = metadata.version(dist.get(mod, mod))
        except metadata.PackageNotFoundError:
            pass  # not installed: nothing to record
    return out
