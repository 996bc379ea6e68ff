"""Ensembles of run_ids and k-fold cross-validation without Snakemake or training: the averaged
model, the averaged predictions, the folds, the run_ids they make, the ensemble's place in the
DAG (Workflow.job) and in the report. The real runs are in tests/test_workflow_e2e.py."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from bioflow import report, workflows
from bioflow.data.manifest import fold_info, for_run
from bioflow.data.validate import _split_folds
from bioflow.errors import BioflowError
from bioflow.inference.ensemble import average_predictions, average_probabilities
from bioflow.layout import ENSEMBLE, Layout
from bioflow.models.ensemble import Ensemble

BASE = {
    "classification": {"data": {"train": "t", "test": "s"}, "model": {"architecture": "simple_cnn"}},
    "semantic_segmentation": {"data": {"train": "t", "test": "s"}, "model": {"architecture": "unet"},
                              "inference": {"padding": 8}},
    "patch_classification": {"data": {"train": "t", "test": "s"}, "model": {"architecture": "resnet18"}},
}


def config(workflow="classification", **sections) -> dict:
    cfg = copy.deepcopy(BASE[workflow])
    cfg["experiment"] = {"name": "x", "workflow": workflow}
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


# --- the averaged model ----------------------------------------------------------------------

def test_ensemble_module_softmax_is_the_mean_of_the_members_softmax():
    torch.manual_seed(0)
    members = [torch.nn.Conv2d(1, 3, 3, padding=1) for _ in range(3)]
    x = torch.randn(2, 1, 8, 8)
    want = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0)
    got = torch.softmax(Ensemble(members)(x), 1)
    assert torch.allclose(got, want, atol=1e-6)
    # and it is not just one member's output
    assert not torch.allclose(got, torch.softmax(members[0](x), 1), atol=1e-3)


def test_ensemble_input_size_suits_every_member():
    a, b = torch.nn.Identity(), torch.nn.Identity()
    a.size_divisor, b.size_divisor = 16, 8
    assert Ensemble([a, b]).size_divisor == 16


# --- averaged predictions (classification) ---------------------------------------------------

def _predictions(path, files, probs, names=("a", "b")):
    df = pd.DataFrame({"file": files, "true_class": ["a"] * len(files),
                       "pred_class": [names[i] for i in np.argmax(probs, 1)], "precision": "32"})
    for j, n in enumerate(names):
        df[f"prob_{n}"] = np.asarray(probs)[:, j]
    df.to_csv(path, index=False)
    return path


def test_average_predictions_means_the_runs_probabilities_per_file(tmp_path):
    p1 = _predictions(tmp_path / "1.csv", ["x.png", "y.png", "z.png"], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    # the same files in another order: aligned by file
    p2 = _predictions(tmp_path / "2.csv", ["z.png", "x.png", "y.png"], [[0.0, 1.0], [0.7, 0.3], [0.4, 0.6]])
    manifest = tmp_path / "manifest_test.json"
    manifest.write_text(json.dumps({"workflow": "classification", "ndim": 2, "channels": 1,
                                    "classes": ["a", "b"], "splits": {"test": []}}))
    cfg = {"model": {"multilabel": False}, "inference": {"binarize_threshold": 0.5}}
    out = pd.read_csv(average_predictions(cfg, [p1, p2], manifest, tmp_path / "ens"))
    assert list(out["file"]) == ["x.png", "y.png", "z.png"]
    assert np.allclose(out[["prob_a", "prob_b"]].to_numpy(), [[0.8, 0.2], [0.3, 0.7], [0.3, 0.7]])
    # z: run 1 said a (0.6), the mean says b
    assert list(out["pred_class"]) == ["a", "b", "b"]
    assert (out["n_models"] == 2).all() and "precision" not in out


def test_the_ensemble_does_not_inherit_a_runs_thresholded_decision(tmp_path):
    """Each run's threshold was chosen on its own validation predictions; the ensemble's table
    must not carry run 1's thresholded columns (metrics would report them as the ensemble's)."""
    paths = []
    for i, probs in enumerate(([[0.9, 0.1], [0.35, 0.65]], [[0.7, 0.3], [0.45, 0.55]])):
        p = _predictions(tmp_path / f"{i}.csv", ["x.png", "y.png"], probs)
        df = pd.read_csv(p)
        df["pred_class_thresholded"], df["threshold"], df["threshold_method"] = ["b", "b"], 0.05, "youden"
        df.to_csv(p, index=False)
        paths.append(p)
    manifest = tmp_path / "manifest_test.json"
    manifest.write_text(json.dumps({"workflow": "classification", "ndim": 2, "channels": 1,
                                    "classes": ["a", "b"], "splits": {"test": []}}))
    cfg = {"model": {"multilabel": False}, "inference": {"binarize_threshold": 0.5}}
    out = pd.read_csv(average_predictions(cfg, paths, manifest, tmp_path / "ens"))
    assert not [c for c in out if c.startswith(("pred_class_thresholded", "threshold"))]
    assert list(out["pred_class"]) == ["a", "b"]


def test_average_refuses_runs_that_predicted_other_images(tmp_path):
    a = pd.DataFrame({"file": ["x", "y"], "prob_a": [0.5, 0.5]})
    b = pd.DataFrame({"file": ["x", "w"], "prob_a": [0.5, 0.5]})
    with pytest.raises(BioflowError, match="other test images"):
        average_probabilities([a, b], ["a"], ["1.csv", "2.csv"])


# --- folds -------------------------------------------------------------------------------------

def _entries(n_per_class=(12, 7)):
    return [{"path": f"/{c}/{i}.png", "label": c, "class_name": str(c)}
            for c, n in enumerate(n_per_class) for i in range(n)]


def test_folds_are_a_stratified_seeded_partition():
    pooled = _split_folds(_entries(), 3, seed=0, stratify=True)
    folds = Counter(e["fold"] for e in pooled)
    assert sorted(folds) == [1, 2, 3] and sum(folds.values()) == 19
    for f in (1, 2, 3):  # every fold holds both classes, in proportion (12 -> 4 each, 7 -> 2 or 3)
        per_class = Counter(e["label"] for e in pooled if e["fold"] == f)
        assert per_class[0] == 4 and per_class[1] in (2, 3)
    assert [e["fold"] for e in _split_folds(_entries(), 3, 0, True)] == [e["fold"] for e in pooled]
    assert [e["fold"] for e in _split_folds(_entries(), 3, 1, True)] != [e["fold"] for e in pooled]


def test_too_few_images_for_the_folds_is_a_config_error():
    with pytest.raises(BioflowError, match="data.cv_folds: 5 folds need at least 5"):
        _split_folds(_entries((2, 1)), 5, 0, True)


def test_each_run_validates_on_its_own_fold_and_trains_on_the_rest():
    pooled = _split_folds(_entries(), 3, seed=0, stratify=True)
    manifest = {"cv_folds": 3, "splits": {"train": pooled, "val": [], "test": []}}
    vals = []
    for run_id in (1, 2, 3):
        m = for_run(manifest, run_id, 3)
        train, val = {e["path"] for e in m["splits"]["train"]}, {e["path"] for e in m["splits"]["val"]}
        assert not train & val and len(train | val) == 19
        assert {e["fold"] for e in m["splits"]["val"]} == {run_id}
        assert fold_info(m) == {"cv_fold": run_id, "cv_folds": 3, "n_train": len(train), "n_val": len(val)}
        vals.append(val)
    assert set.union(*vals) == {e["path"] for e in pooled}  # out-of-fold: every image validated once
    with pytest.raises(BioflowError, match="run 4 is not a fold"):
        for_run(manifest, 4, 3)
    with pytest.raises(BioflowError, match="rerun validate_train"):
        for_run(manifest, 1, None)
    plain = {"splits": {"train": pooled, "val": []}}
    assert for_run(plain, 1, None) is plain and fold_info(plain) == {}


# --- config: folds are the run_ids -------------------------------------------------------------

def test_cv_folds_make_the_run_ids():
    cfg = config(data={"cv_folds": 4})
    workflows.validate_config(cfg)
    assert cfg["experiment"]["run_ids"] == [1, 2, 3, 4]
    given = config(data={"cv_folds": 2}, experiment={"name": "x", "workflow": "classification", "run_ids": [1, 2]})
    workflows.validate_config(given)
    assert given["experiment"]["run_ids"] == [1, 2]


@pytest.mark.parametrize("cfg, needle", [
    (config(data={"cv_folds": 3}, experiment={"name": "x", "workflow": "classification", "run_ids": [1, 2]}),
     r"experiment.run_ids: with data.cv_folds: 3 the run ids are the folds \[1, 2, 3\]"),
    (config("patch_classification", data={"cv_folds": 3}), "patches.cross_validation"),
    (config(data={"cv_folds": 1}), "cv_folds"),
])
def test_bad_cross_validation_configs_name_the_key(cfg, needle):
    with pytest.raises(BioflowError) as err:
        workflows.validate_config(cfg)
    assert any(re.search(needle, p) for p in [str(err.value), *(err.value.problems or [])]), err.value


# --- the ensemble's place in the DAG ------------------------------------------------------------

@pytest.mark.parametrize("workflow", ["classification", "semantic_segmentation"])
def test_several_run_ids_add_an_ensemble_evaluated_and_reported_as_one_more_run(workflow):
    cfg = config(workflow, experiment={"name": "x", "workflow": workflow, "run_ids": [1, 2, 3]})
    wf = workflows.validate_config(cfg)
    stages = wf.stages(cfg)
    assert stages.index("predict") < stages.index("ensemble") < stages.index("metrics")
    lay = Layout.of(cfg)
    job = wf.job("ensemble", cfg, "{run_id}")  # the rule has no wildcard: always the ensemble's folder
    assert job.output["csv"] == f"{lay.ensemble_dir}/predictions.csv" and job.run_id == ENSEMBLE
    reads = job.input["ckpts"] if wf.ensemble_predicts else job.input["predictions"]
    assert len(reads) == 3 and "x_1" in reads[0] and "x_3" in reads[2]
    if workflow == "semantic_segmentation":  # the per-image folders as predict's
        assert job.output["per_image_dir"] == f"{lay.ensemble_dir}/per_image"
    metrics = wf.job("metrics", cfg, ENSEMBLE)
    assert metrics.input["predictions"] == job.output["csv"] and metrics.run_id == ENSEMBLE
    rep = wf.job("report", cfg)
    assert rep.input["ensemble_metrics"] == metrics.output["json"]
    assert rep.params["ensemble_dir"] == lay.ensemble_dir and len(rep.input["metrics"]) == 3


@pytest.mark.parametrize("cfg", [
    config(),  # one run_id
    config(experiment={"name": "x", "workflow": "classification", "run_ids": [1, 2]}, data={"test": None}),
    config("patch_classification", experiment={"name": "x", "workflow": "patch_classification", "run_ids": [1, 2]}),
], ids=["one_run", "no_test_set", "patch_classification"])
def test_no_ensemble_without_several_trained_runs_and_a_test_set(cfg):
    wf = workflows.validate_config(cfg)
    assert "ensemble" not in wf.stages(cfg)
    assert "ensemble_metrics" not in wf.job("report", cfg).input


# --- the report --------------------------------------------------------------------------------

CFG = {"experiment": {"name": "e", "workflow": "classification", "ndim": 2}, "report": {"title": None, "max_charts": 0}}


def test_report_shows_the_ensemble_beside_the_runs_and_out_of_fold_scores(tmp_path):
    dirs = []
    for fold, (acc, val) in enumerate([(0.8, 0.70), (0.9, 0.80)], start=1):
        d = tmp_path / f"e_{fold}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"accuracy": acc}))
        (d / "train_summary.json").write_text(json.dumps({"monitor": "val_auc", "best_score": val, "cv_fold": fold,
                                                          "cv_folds": 2, "n_train": 10, "n_val": 5}))
        dirs.append(d)
    ens = tmp_path / "e_ensemble"
    ens.mkdir()
    (ens / "metrics.json").write_text(json.dumps({"accuracy": 0.95, "ci95": {"accuracy": [0.9, 0.99]}}))
    page = report.run(CFG, dirs, tmp_path / "r.html", ensemble_dir=ens).read_text()
    # the mean ± sd is over the runs only; the ensemble is its own column and has its CI
    assert "<td>accuracy</td><td>0.8500 ± 0.0707</td><td>2</td><td>0.8000</td><td>0.9000</td><td>0.9500</td>" in page
    assert "<th>e_ensemble</th>" in page and "<td>e_ensemble</td><td>accuracy</td><td>[0.9000, 0.9900]</td>" in page
    assert "Cross-validation: out-of-fold validation (2 folds)" in page
    assert "0.7500 ± 0.0707" in page  # mean ± sd of the folds' validation scores


def test_out_of_fold_metrics_pool_the_folds_held_out_predictions(tmp_path):
    from bioflow.metrics.classification import classification_metrics, out_of_fold
    rng = np.random.default_rng(0)
    parts, ys, ps = [], [], []
    for fold in (1, 2):
        p = rng.dirichlet([1, 1], size=10)
        y = rng.integers(0, 2, 10)
        pd.DataFrame({"file": [f"/{fold}/{i}.png" for i in range(10)], "fold": fold,
                      "true_class": [("a", "b")[v] for v in y], "prob_a": p[:, 0], "prob_b": p[:, 1]}
                     ).to_csv(tmp_path / f"{fold}.csv", index=False)
        parts.append(tmp_path / f"{fold}.csv")
        ys.append(y)
        ps.append(p)
    m = out_of_fold(parts, ["a", "b"], multilabel=False, n_resamples=20)
    want = classification_metrics(np.concatenate(ys), np.concatenate(ps), ["a", "b"])
    assert m["n_samples"] == 20 and m["folds"] == [1, 2]
    assert m["accuracy"] == pytest.approx(want["accuracy"]) and m["auc"] == pytest.approx(want["auc"])
    assert set(m["ci95"]) >= {"accuracy", "auc"}


def test_a_cross_validated_classification_run_declares_its_out_of_fold_predictions():
    cfg = config(data={"cv_folds": 3})
    wf = workflows.validate_config(cfg)
    job = wf.job("train", cfg, 2)
    assert job.output["oof"] == f"{Layout.of(cfg).run_dir(2)}/oof_predictions.csv"
    plain = config()
    workflows.validate_config(plain)
    assert "oof" not in wf.job("train", plain, 1).output
