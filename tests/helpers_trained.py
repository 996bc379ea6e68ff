"""Tiny trained models shared by the tests that use a finished training (predict-only
experiments, export): trained once per session through the stages, as the rules run them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bioflow import workflows
from bioflow.config import deep_update
from bioflow.layout import Layout
from helpers_stages import call, job, prepare

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo_data"


def _trained(tmp: Path, workflow: str, data: dict, **sections) -> dict:
    """Train run 1 and predict with it through the stages, as the rules do; returns the config."""
    base = {"experiment": {"name": "trained", "workflow": workflow, "result_dir": str(tmp / "results")},
            "data": data, "metrics": {"bootstrap": 0}, "train": {"epochs": 1, "n_sample_images": 0}}
    cfg = deep_update(base, sections)
    workflows.validate_config(cfg)
    prepare(cfg)
    call(cfg, "train", 1)
    call(cfg, "predict", 1)
    return cfg


@pytest.fixture(scope="session")
def classification_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cls")
    import pandas as pd
    table = pd.read_csv(DEMO / "pneumoniamnist" / "labels.csv")
    root = tmp / "pneumonia"
    for split, n in (("train", 10), ("test", 4)):
        for label, rows in table[table["split"] == split].groupby("label"):
            (root / split / label).mkdir(parents=True)
            for f in rows["file"].iloc[:n]:
                shutil.copy2(DEMO / "pneumoniamnist" / f, root / split / label)
    return _trained(tmp, "classification", {"train": str(root / "train"), "test": str(root / "test"),
                                            "patch_size": [28, 28]},
                    model={"architecture": "simple_cnn"}, train={"batch_size": 8}, inference={"tta": True})


@pytest.fixture(scope="session")
def segmentation_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    data = tmp / "dsb"
    shutil.copytree(DEMO / "dsb2018", data)
    return _trained(tmp, "semantic_segmentation",
                    {"train": str(data / "train"), "test": str(data / "test"), "mask_transform": "foreground",
                     "patch_size": [64, 64], "normalization": {"type": "percentile"}},
                    model={"architecture": "unet_nd", "features": [4, 8, 16]},
                    train={"steps_per_epoch": 1, "batch_size": 2}, inference={"padding": 4, "batch_size": 4})


def run_dir(cfg, run_id) -> Path:
    return Path(Layout.of(cfg).run_dir(run_id))


def ckpt_of(cfg) -> str:
    return job(cfg, "train", 1).output["ckpt"]


@pytest.fixture(scope="session")
def segmentation_3d_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg3d")
    data = tmp / "nuclei3d"
    shutil.copytree(DEMO / "nuclei3d", data)
    return _trained(tmp, "semantic_segmentation",
                    {"train": str(data / "train"), "test": str(data / "test"), "mask_transform": "foreground",
                     "patch_size": [16, 32, 32]},
                    experiment={"ndim": 3}, model={"architecture": "unet3d", "features": [4, 8]},
                    train={"steps_per_epoch": 1, "batch_size": 2}, inference={"padding": 4, "batch_size": 4})
