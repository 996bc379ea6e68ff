"""The patch classification DAG end to end through the real Snakefile, on a sample the tests
make (quadra's images/ + masks/ layout): every output, the deployment folder reproducing the
predictions in a predict-only run, and rerun precision (a head change reruns the head's
stages only, never the feature extraction; a patch_size change reruns generation)."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest
import yaml
from helpers_patches import make_sample, sample_config
from helpers_snakemake import deep_update, planned_jobs, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("patch_run")
    data = make_sample(work / "data")
    cfg = sample_config(data, work / "results", cross_validation=2)
    path = work / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake(work, path, "--cores", "2")
    return {"work": work, "config": path, "cfg": cfg, "root": work / "results" / "pt"}


def _changed(run, overrides, name):
    path = run["work"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(deep_update(run["cfg"], overrides), sort_keys=False))
    return path


def test_outputs_of_every_stage(run):
    root = run["root"]
    info = json.loads((root / "prepared" / "patches" / "info.json").read_text())
    assert info["classes"] == ["good", "bright", "dark"] and len(info["test_files"]) == 3
    rd = root / "results" / "pt_1"
    model = json.loads((rd / "deployment" / "model.json").read_text())
    assert model["class_to_idx"] == {"good": 0, "bright": 1, "dark": 2} and model["input_size"] == [32, 32]
    assert model["normalization"]["config"]["type"] == "zscore" and model["normalization"]["stats"]["mean"]
    assert {"model.json", "backbone.pt", "head.joblib"} <= {p.name for p in (rd / "deployment").iterdir()}
    summary = json.loads((rd / "train_summary.json").read_text())
    assert summary["cross_validation"]["folds"] == 2 and 0 <= summary["val_accuracy"] <= 1
    metrics = json.loads((rd / "metrics.json").read_text())
    pred = pd.read_csv(rd / "predictions.csv", keep_default_na=False)
    assert len(pred) == 36 and metrics["n_patches"] == 36
    assert set(metrics["per_class"]) == {"good", "bright", "dark"}
    # raw pixels separate bright squares / dark bars from texture: far better than chance
    assert metrics["accuracy"] > 0.8
    assert {"image_detection", "regions", "reconstruction"} <= set(metrics)
    assert metrics["image_detection"]["n_images"] == 3 and "reconstruction.iou_defect" in metrics["ci95"]
    rec = json.loads((rd / "reconstruction_results.json").read_text())
    assert len(rec) == 3 and all({"prediction", "defects", "iou", "false_regions"} <= set(r) for r in rec)
    for r in rec:
        for region in r["prediction"]:
            assert region["label"] in ("bright", "dark") and len(region["points"]) >= 3
    assert sorted(p.stem for p in (rd / "overlays").glob("*.png")) == sorted(r["file_name"][:-4] for r in rec)
    html = (root / "report.html").read_text()
    assert "Reconstructed defects" in html and html.count("data:image/png") >= 4


def test_predict_only_run_from_the_deployment_folder_reproduces_the_predictions(run):
    rd = run["root"] / "results" / "pt_1"
    cfg = deep_update(run["cfg"], {"experiment": {"name": "deployed"},
                                   "patches": {"deployment": str(rd / "deployment")}})
    path = run["work"] / "deployed.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    jobs = planned_jobs(run["work"], path)
    assert "patch_features" not in jobs and "patch_head" not in jobs and "validate_train" not in jobs
    snakemake(run["work"], path, "--cores", "2")
    ours = pd.read_csv(rd / "predictions.csv", keep_default_na=False)
    theirs = pd.read_csv(run["work"] / "results" / "deployed" / "results" / "deployed_1" / "predictions.csv",
                         keep_default_na=False)
    assert theirs["pred"].tolist() == ours["pred"].tolist()
    pcols = [c for c in ours if c.startswith("p_")]
    assert (theirs[pcols] - ours[pcols]).abs().to_numpy().max() < 1e-5


def test_head_change_reruns_only_the_head_stages(run):
    jobs = planned_jobs(run["work"], _changed(run, {"patches": {"classifier": "sklearn.svm.SVC",
                                                                "classifier_kwargs": {"probability": True}}}, "svc"))
    assert jobs == Counter({"patch_head": 1, "predict": 1, "metrics": 1, "report": 1, "save_config": 1})


def test_reconstruction_change_reruns_only_metrics(run):
    jobs = planned_jobs(run["work"], _changed(run, {"patches": {"reconstruction": "priority"}}, "prio"))
    assert jobs == Counter({"metrics": 1, "report": 1, "save_config": 1})


def test_patch_size_change_reruns_generation_onward(run):
    jobs = planned_jobs(run["work"], _changed(run, {"patches": {"patch_size": [24, 24]}}, "ps"))
    # validation checks images against the patch size (smaller ones are named or refused), so it
    # reruns too, and norm_stats after the new training manifest
    assert jobs == Counter({"validate_train": 1, "validate_test": 1, "norm_stats": 1, "patch_dataset": 1,
                            "patch_features": 1, "patch_head": 1, "predict": 1, "metrics": 1,
                            "report": 1, "save_config": 1})
