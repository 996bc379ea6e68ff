"""A small patch-classification sample made by the tests (quadra's images/ + masks/ layout):
textured grey images, some with a bright square (class 1) and some with a dark bar (class 2);
every third image has no mask (wholly good)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bioflow.io import write_image

CLASSES = {"good": 0, "bright": 1, "dark": 2}


def make_sample(root: Path, n: int = 12, shape=(96, 128), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root = Path(root)
    for i in range(n):
        img = rng.normal(100, 12, shape)
        mask = np.zeros(shape, np.uint8)
        y, x = rng.integers(4, shape[0] - 44), rng.integers(4, shape[1] - 44)
        if i % 3 == 1:
            mask[y:y + 30, x:x + 30] = 1
        elif i % 3 == 2:
            mask[y:y + 40, x:x + 12] = 2
        img[mask == 1] += 70
        img[mask == 2] -= 70
        write_image(root / "images" / f"im{i:02d}.png", img.clip(0, 255).astype(np.uint8))
        if i % 3:
            write_image(root / "masks" / f"im{i:02d}_mask.png", mask, channels_last=False)
    return root


def sample_config(data: Path, result_dir: Path, **patches) -> dict:
    return {"experiment": {"name": "pt", "workflow": "patch_classification", "result_dir": str(result_dir),
                           "run_ids": [1]},
            "data": {"train": str(data), "channels": 1},
            "model": {"architecture": "raw_pixels", "n_classes": 3},
            "patches": {"mask_extension": "_mask", "class_to_idx": dict(CLASSES), "patch_size": [32, 32],
                        "val_size": 0.25, "test_size": 0.25, "iteration_over_training": 4, **patches},
            "metrics": {"bootstrap": 20}}
