"""Reproducibility on CPU: the same config and run_id give bit-identical predictions and
metrics on a second run; another run_id gives other ones; the seed and the library versions are
recorded per run (train_summary.json). A tiny model, a few steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bioflow.layout import Layout
from helpers_stages import call, prepare

pytestmark = pytest.mark.slow  # trains (tiny, ~10 s per run on 2 cores)


def run_dir(cfg, run_id) -> Path:
    return Path(Layout.of(cfg).run_dir(run_id))


def _train_predict(cfg, run_id):
    call(cfg, "train", run_id)
    call(cfg, "predict", run_id)
    call(cfg, "metrics", run_id)
    rd = run_dir(cfg, run_id)
    return ((rd / "predictions.csv").read_bytes(), json.loads((rd / "metrics.json").read_text()),
            json.loads((rd / "train_summary.json").read_text()))


def test_same_run_id_bit_identical_other_run_id_differs(make_cfg, pneumonia_folders, tmp_path):
    cfg = make_cfg(data={"train": str(pneumonia_folders / "train"), "test": str(pneumonia_folders / "test"),
                         "val_split": 0.25, "patch_size": [28, 28]},
                   model={"architecture": "simple_cnn", "features": [4, 8]},
                   train={"epochs": 2, "batch_size": 4, "n_sample_images": 0, "devices": 1,
                          "augmentation": {"affine": True, "gaussian_noise": True}},
                   inference={"tta": True}, metrics={"bootstrap": 50})
    prepare(cfg)
    first = _train_predict(cfg, 1)
    # a fresh second run: everything the first wrote for run 1 is gone (no resume, no cache)
    root = Path(cfg["experiment"]["result_dir"]) / cfg["experiment"]["name"]
    for p in root.rglob("*"):
        if p.is_dir() and p.name.endswith("_1"):
            shutil.rmtree(p, ignore_errors=True)
    shutil.rmtree(root / "checkpoints", ignore_errors=True)
    assert not (run_dir(cfg, 1) / "predictions.csv").exists()
    second = _train_predict(cfg, 1)
    assert second[0] == first[0]  # predictions.csv, byte for byte (probabilities included)
    assert second[1] == first[1]  # metrics.json, bootstrap intervals included
    assert second[2]["best_score"] == first[2]["best_score"]

    other = _train_predict(cfg, 2)
    assert other[0] != first[0]

    for summary, run_id in ((first[2], 1), (other[2], 2)):
        assert summary["seed"] == run_id
        versions = summary["versions"]
        for lib in ("bioflow", "python", "torch", "numpy", "pytorch_lightning"):
            assert versions[lib], lib
