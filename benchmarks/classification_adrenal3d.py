#!/usr/bin/env python
"""AdrenalMNIST3D-64 (64^3 binary adrenal shapes, normal vs mass) with the classification_3d template.

Data: ../shared/data/ (beside the repository; BIOFLOW_SHARED_DATA overrides) adrenalmnist3d_64/adrenalmnist3d_64.npz (train 929 / 259, val 76 / 22,
test 229 / 69). Target (issue 13): test AUC >= 0.92 within 15 minutes of training in all on 2
CPU cores (the template: 5 cross-validation folds of 3 minutes, ensembled); the baseline is the
previous template (``--baseline``: one run, 15-minute limit, early stopping on a 98-volume
validation set).

    python benchmarks/classification_adrenal3d.py --out DIR [--baseline]
"""

import os
from pathlib import Path

from classification_common import REPO, main

DATA = Path(os.environ.get("BIOFLOW_SHARED_DATA", REPO.parent / "shared" / "data")) / "adrenalmnist3d_64" / "adrenalmnist3d_64.npz"

OVERRIDES = {  # only paths, channels, class count and patch size differ from the template
    "data": {"csv": str(DATA), "train": None, "val": None, "test": None, "channels": 1,
             "csv_options": {"class_names": ["normal", "mass"]}},
    "model": {"n_classes": 2},
}

if __name__ == "__main__":
    main("adrenal3d", "classification_3d.yaml", OVERRIDES, {"auc": 0.92, "train_minutes": 15})
