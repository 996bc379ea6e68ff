#!/usr/bin/env python
"""PneumoniaMNIST (28x28 chest X-rays, normal vs pneumonia) with the classification_2d template.

Data: ../shared/data/ (beside the repository; BIOFLOW_SHARED_DATA overrides) pneumoniamnist/pneumoniamnist.npz (train 388 normal / 3494
pneumonia, val 135 / 389, official test 234 / 390). Targets (issue 13): test accuracy >= 0.92
and AUC >= 0.975 within the template's 10 minutes of training on 2 CPU cores; the baseline is
the previous template (``--baseline``, see classification_common.PREVIOUS_DEFAULTS).

    python benchmarks/classification_pneumonia.py --out DIR [--baseline]
"""

import os
from pathlib import Path

from classification_common import REPO, main

DATA = Path(os.environ.get("BIOFLOW_SHARED_DATA", REPO.parent / "shared" / "data")) / "pneumoniamnist" / "pneumoniamnist.npz"

OVERRIDES = {  # only paths, channels, class count and patch size differ from the template
    "data": {"csv": str(DATA), "train": None, "val": None, "test": None, "channels": 1,
             "patch_size": [64, 64], "csv_options": {"class_names": ["normal", "pneumonia"]}},
    "model": {"n_classes": 2},
}

if __name__ == "__main__":
    main("pneumonia", "classification_2d.yaml", OVERRIDES, {"accuracy": 0.92, "auc": 0.975, "train_minutes": 10})
