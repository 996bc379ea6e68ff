"""Predict-only experiments (``model.checkpoint``): a trained model used on its own.

A tiny classification and a tiny segmentation model are trained once (tests/helpers_trained.py); a
second experiment that only names the checkpoint must reproduce the first one's predictions
exactly, plan no training stage, and refuse a checkpoint that does not fit its data."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from bioflow import workflows
from bioflow.config import deep_update
from bioflow.errors import BioflowError
from bioflow.inference.segmentation import FOLDERS
from helpers_snakemake import planned_jobs
from helpers_stages import call, job
from helpers_trained import classification_run, ckpt_of, run_dir, segmentation_run  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


def predict_only_config(trained: dict, tmp: Path, **sections) -> dict:
    """What a user writes to reuse a model: no training data, no model keys, the checkpoint."""
    cfg = {"experiment": {"name": "reuse", "workflow": trained["experiment"]["workflow"],
                          "result_dir": str(tmp / "results")},
           "data": {"test": trained["data"]["test"]}, "model": {"checkpoint": ckpt_of(trained)},
           "inference": copy.deepcopy(trained["inference"]), "metrics": {"bootstrap": 0}}
    return deep_update(cfg, sections)


def run_predict_only(cfg: dict) -> Path:
    """The stages a predict-only DAG runs, each on its slice."""
    wf = workflows.validate_config(cfg)
    assert wf.stages(cfg) == [s for s in ("validate_test", "predict", "postprocess", "metrics", "report",
                                          "save_config") if s in wf.stages(cfg)]
    for stage in ["save_config"] + wf.stages(cfg)[:-1]:  # the report reads the config copy
        call(cfg, stage, 1 if stage in ("predict", "postprocess", "metrics") else None)
    return run_dir(cfg, 1)


def test_classification_predictions_are_reproduced_exactly(classification_run, tmp_path):
    cfg = predict_only_config(classification_run, tmp_path)
    rd = run_predict_only(cfg)
    original = run_dir(classification_run, 1) / "predictions.csv"
    assert (rd / "predictions.csv").read_bytes() == original.read_bytes()
    # the model's keys came from the checkpoint, and the saved config says so
    saved = yaml.safe_load((Path(cfg["experiment"]["result_dir"]) / "reuse" / "config_files" / "config.yaml").read_text())
    assert saved["model"]["architecture"] == "simple_cnn" and saved["data"]["patch_size"] == [28, 28]
    assert saved["model"]["checkpoint"] == ckpt_of(classification_run)
    assert (rd / "metrics.json").is_file() and (Path(cfg["experiment"]["result_dir"]) / "reuse" / "report.html").is_file()


def test_segmentation_predictions_and_tiffs_are_reproduced_exactly(segmentation_run, tmp_path):
    cfg = predict_only_config(segmentation_run, tmp_path)
    rd = run_predict_only(cfg)
    orig = run_dir(segmentation_run, 1)
    names = sorted(p.name for p in (orig / "per_image").iterdir())
    assert len(names) == 4
    folders = [f for f in FOLDERS if (rd / f).is_dir()]  # full_image is opt-in (inference.full_image)
    assert "per_image" in folders and "per_image_binarized" in folders
    for folder in folders:
        for name in names:
            assert np.array_equal(tifffile.imread(rd / folder / name), tifffile.imread(orig / folder / name)), (folder, name)
    # predictions.csv holds the output paths (per run folder) and timings; the rest is equal
    import pandas as pd
    a, b = pd.read_csv(rd / "predictions.csv"), pd.read_csv(orig / "predictions.csv")
    same = [c for c in a.columns if not c.startswith(("seconds",)) and c not in FOLDERS]
    assert list(a.columns) == list(b.columns) and a[same].equals(b[same])
    assert (rd / "patch_metrics.json").read_text() == (orig / "patch_metrics.json").read_text()


def test_the_dag_has_no_training_stage(classification_run, tmp_path):
    cfg = predict_only_config(classification_run, tmp_path)
    path = tmp_path / "reuse.yaml"
    path.write_text(yaml.safe_dump(cfg))
    jobs = planned_jobs(tmp_path, path)
    assert set(jobs) == {"validate_test", "predict", "metrics", "report", "save_config"}, jobs
    # unlabelled test data: no metrics to compute, still a report
    cfg["data"]["test_has_labels"] = False
    path.write_text(yaml.safe_dump(cfg))
    assert "train" not in planned_jobs(tmp_path, path)


def test_a_config_key_that_contradicts_the_checkpoint_is_named(classification_run, tmp_path):
    cfg = predict_only_config(classification_run, tmp_path, data={"channels": 3, "patch_size": [28, 28]},
                              model={"architecture": "resnet18"})
    with pytest.raises(BioflowError) as err:
        workflows.validate_config(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert "data.channels: 3 but the model of model.checkpoint" in msg and "trained with 1" in msg
    assert "model.architecture: 'resnet18'" in msg
    assert "data.patch_size" not in msg  # given, but equal to the checkpoint's
    wrong_workflow = predict_only_config(classification_run, tmp_path,
                                         experiment={"workflow": "semantic_segmentation"})
    with pytest.raises(BioflowError, match="holds a 'classification' model; set experiment.workflow: classification"):
        workflows.validate_config(wrong_workflow)
    with pytest.raises(BioflowError, match=r"model.checkpoint: .*nope.ckpt not found"):
        workflows.validate_config(predict_only_config(classification_run, tmp_path,
                                                      model={"checkpoint": str(tmp_path / "nope.ckpt")}))


def test_test_data_that_does_not_fit_the_checkpoint_fails_before_prediction(classification_run, tmp_path):
    test = tmp_path / "test"
    rng = np.random.default_rng(0)
    for cls in ("normal", "cat"):  # a class the model never saw
        (test / cls).mkdir(parents=True)
        tifffile.imwrite(test / cls / "a.tif", rng.integers(0, 255, (8, 28, 28), dtype=np.uint8))  # a volume
    cfg = predict_only_config(classification_run, tmp_path, data={"test": str(test)})
    workflows.validate_config(cfg)
    with pytest.raises(BioflowError) as err:
        call(cfg, "validate_test")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"model.checkpoint: {ckpt_of(classification_run)} (a 2D "
                                              f"classification model, 1 channel(s), 2 classes")
    assert "does not fit the test data" in msg and "is not a 2D image with 1 channel(s)" in msg and "class 'cat'" in msg
    assert not run_dir(cfg, 1).exists()


def test_a_workflow_without_prediction_refuses_a_checkpoint(classification_run, tmp_path):
    cfg = {"experiment": {"name": "p", "workflow": "patch_classification"}, "data": {"test": "t"},
           "model": {"checkpoint": ckpt_of(classification_run)}}
    with pytest.raises(BioflowError, match="patch_classification workflow does not predict from a bioflow checkpoint"):
        workflows.validate_config(cfg)


def test_every_checkpoint_says_where_it_comes_from(classification_run):
    import hashlib
    import json

    from bioflow import __version__
    from bioflow.models import checkpoint
    prov = checkpoint.hparams(ckpt_of(classification_run))["provenance"]
    summary = json.loads((run_dir(classification_run, 1) / "train_summary.json").read_text())
    manifest = Path(job(classification_run, "train", 1).input["manifest"])
    assert prov["bioflow_version"] == __version__ and prov["torch_version"]
    assert prov["config_hash"] == summary["config_hash"]
    assert prov["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert prov["training"]["best_epoch"] == summary["best_epoch"] == 0
    assert prov["training"]["stop_reason"] == "max_epochs" and prov["training"]["run_id"] == 1
