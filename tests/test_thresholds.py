"""Decision thresholds chosen on validation (inference.threshold): the choice against brute force
with sklearn, the record a checkpoint keeps, how prediction resolves the setting, and the
thresholded metrics beside the argmax ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from bioflow.errors import BioflowError
from bioflow.metrics import thresholds
from bioflow.metrics.classification import evaluate


def _binary(n=200, seed=0, shift=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + shift * (2 * y - 1) - 0.8)))  # biased low: 0.5 is not best
    return y, np.round(s, 3)  # ties on purpose


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_youden_is_the_best_point_of_the_roc_curve(seed):
    y, s = _binary(seed=seed)
    t, value = thresholds.choose(s, y, "youden")
    fpr, tpr, _ = skm.roc_curve(y, s)
    assert value == pytest.approx(np.max(tpr - fpr))
    pred = s >= t
    assert skm.recall_score(y, pred) + skm.recall_score(1 - y, ~pred) - 1 == pytest.approx(value)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_is_the_best_f1_over_every_cut(seed):
    y, s = _binary(seed=seed)
    t, value = thresholds.choose(s, y, "f1")
    best = max(skm.f1_score(y, s >= c) for c in np.unique(s))
    assert value == pytest.approx(best)
    assert skm.f1_score(y, s >= t) == pytest.approx(value)


def test_separable_scores_get_a_threshold_between_the_classes():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.05, 0.1, 0.2, 0.3, 0.9])
    for method in ("youden", "f1"):
        t, value = thresholds.choose(s, y, method)
        assert 0.2 < t < 0.3 and value == pytest.approx(1.0)
    # the plain 0.5 would miss a positive: the chosen threshold is what helps
    assert (s >= 0.5).sum() == 1


def test_one_class_has_nothing_to_choose(caplog):
    assert thresholds.choose([0.1, 0.7], [1, 1], "youden") is None
    rec = thresholds.validation_record(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([1, 1]), False)
    assert rec["youden"]["threshold"] is None
    out = thresholds.resolve("youden", rec, 2, False, "m.ckpt")
    assert out == {"method": "youden", "threshold": 0.5}
    assert "one class only" in caplog.text


def test_validation_record_binary_multilabel_and_multiclass():
    y, s = _binary(seed=3)
    rec = thresholds.validation_record(np.stack([1 - s, s], 1), y, multilabel=False)
    assert rec["kind"] == "binary" and rec["n_val"] == len(y)
    assert rec["youden"]["threshold"] == pytest.approx(thresholds.choose(s, y, "youden")[0])
    json.dumps(rec)  # plain data (weights_only-safe)
    y2, s2 = _binary(seed=4)
    ml = thresholds.validation_record(np.stack([s, s2], 1), np.stack([y, y2], 1), multilabel=True)
    assert ml["kind"] == "multilabel" and len(ml["f1"]["threshold"]) == 2
    assert ml["f1"]["threshold"][1] == pytest.approx(thresholds.choose(s2, y2, "f1")[0])
    assert thresholds.validation_record(np.full((4, 3), 1 / 3), np.array([0, 1, 2, 0]), False) is None


def test_resolve_the_setting():
    rec = {"kind": "binary", "youden": {"threshold": 0.3, "value": 0.8}, "f1": {"threshold": 0.4, "value": 0.7}}
    assert thresholds.resolve("argmax", rec, 2, False, "m.ckpt") is None
    assert thresholds.resolve("youden", rec, 2, False, "m.ckpt") == {"method": "youden", "threshold": 0.3}
    assert thresholds.resolve(0.25, None, 2, False, "m.ckpt") == {"method": "fixed", "threshold": 0.25}
    assert thresholds.resolve(0.25, None, 3, True, "m.ckpt") == {"method": "fixed", "threshold": [0.25] * 3}
    # auto: youden where a threshold exists (binary, multi-label), the argmax for multi-class
    assert thresholds.resolve("auto", rec, 2, False, "m.ckpt") == {"method": "youden", "threshold": 0.3}
    assert thresholds.resolve("auto", None, 3, False, "m.ckpt") is None
    with pytest.raises(BioflowError, match=r"^inference.threshold: youden .* m.ckpt holds no validation record"):
        thresholds.resolve("youden", None, 2, False, "m.ckpt")
    with pytest.raises(BioflowError, match="inference.threshold: f1 is for binary and multi-label models"):
        thresholds.resolve("f1", rec, 3, False, "m.ckpt")


def _manifest(tmp_path, classes, multilabel=False):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"workflow": "classification", "ndim": 2, "channels": 1, "classes": classes,
                                "multilabel": multilabel, "splits": {"train": [], "val": [], "test": []}}))
    return path


def test_metrics_show_the_thresholded_decision_beside_argmax(tmp_path):
    y, s = _binary(n=120, seed=5)
    names = ["neg", "pos"]
    t = 0.31
    df = pd.DataFrame({"file": [f"{i}.png" for i in range(len(y))], "true_class": [names[i] for i in y],
                       "pred_class": [names[int(v >= 0.5)] for v in s], "prob_neg": 1 - s, "prob_pos": s,
                       "pred_class_thresholded": [names[int(v >= t)] for v in s],
                       "threshold_method": "youden", "threshold": t})
    df.to_csv(tmp_path / "predictions.csv", index=False)
    cfg = {"data": {"test_has_labels": True}, "model": {"multilabel": False}, "metrics": {"bootstrap": 30}}
    out = evaluate(cfg, 1, _manifest(tmp_path, names), tmp_path)
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, s >= 0.5))  # argmax unchanged
    thr = out["thresholded"]
    assert thr["accuracy"] == pytest.approx(skm.accuracy_score(y, s >= t))
    assert thr["accuracy"] != pytest.approx(out["accuracy"])
    assert thr["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, s >= t))
    assert thr["method"] == "youden" and thr["threshold"] == t and thr["positive_class"] == "pos"
    assert thr["confusion_matrix"] == skm.confusion_matrix(y, (s >= t).astype(int)).tolist()
    lo, hi = thr["ci95"]["accuracy"]
    assert lo <= thr["accuracy"] <= hi and "auc" not in thr
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert "thresholded.accuracy" in set(table["metric"])


def test_multilabel_thresholded_metrics(tmp_path):
    y1, s1 = _binary(n=80, seed=6)
    y2, s2 = _binary(n=80, seed=7)
    names = ["a", "b"]
    ts = [0.3, 0.6]
    df = pd.DataFrame({"file": [f"{i}.png" for i in range(80)], "true_class": "", "pred_class": "",
                       "prob_a": s1, "prob_b": s2, "pred_a": (s1 >= .5).astype(int), "pred_b": (s2 >= .5).astype(int),
                       "true_a": y1, "true_b": y2, "pred_class_thresholded": "", "threshold_method": "f1",
                       "threshold_a": ts[0], "threshold_b": ts[1],
                       "pred_thresholded_a": (s1 >= ts[0]).astype(int), "pred_thresholded_b": (s2 >= ts[1]).astype(int)})
    df.to_csv(tmp_path / "predictions.csv", index=False)
    cfg = {"data": {"test_has_labels": True}, "model": {"multilabel": True}, "metrics": {"bootstrap": 0}}
    out = evaluate(cfg, 1, _manifest(tmp_path, names, multilabel=True), tmp_path)
    y = np.stack([y1, y2], 1)
    pred = np.stack([s1 >= ts[0], s2 >= ts[1]], 1).astype(int)
    assert out["thresholded"]["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert out["thresholded"]["threshold"] == {"a": 0.3, "b": 0.6}


# --- end to end on the bundled PneumoniaMNIST sample: train -> checkpoint record -> predict -> metrics

def test_threshold_chosen_on_validation_travels_in_the_checkpoint_to_prediction(make_cfg, pneumonia_folders,
                                                                               tmp_path):
    import torch

    from bioflow.data.augment import tta_flags
    from bioflow.data.classification import ClassificationDataset
    from bioflow.data.manifest import load_manifest
    from bioflow.inference import classification as inference
    from bioflow.models.checkpoint import load_model_from_checkpoint
    from helpers_stages import call, job, prepare

    cfg = make_cfg(data={"train": str(pneumonia_folders / "train"), "test": str(pneumonia_folders / "test"),
                         "val_split": 0.25, "patch_size": [28, 28]},
                   model={"architecture": "simple_cnn", "features": [8, 16]},
                   train={"epochs": 2, "batch_size": 8, "n_sample_images": 0, "precision": "32"},
                   inference={"threshold": "youden", "precision": "32"}, metrics={"bootstrap": 20})
    prepare(cfg)
    summary = call(cfg, "train", 1)
    ckpt = job(cfg, "train", 1).output["ckpt"]
    hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    rec = hp["validation"]
    assert rec["kind"] == "binary" and rec["epoch"] == summary["best_epoch"] and rec["n_val"] == 4

    # the record is the best checkpoint's own validation: recompute it from the saved model
    model, _ = load_model_from_checkpoint(ckpt)
    manifest = load_manifest(job(cfg, "train", 1).input["manifest"])
    val = manifest["splits"]["val"]
    ds = ClassificationDataset(manifest, val, hp["normalization"], hp["cfg"]["data"], None, False)
    probs = inference.predict_proba(model, torch.utils.data.DataLoader(ds, batch_size=8), torch.device("cpu"))
    y = np.array([e["label"] for e in val])
    expected = thresholds.choose(probs[:, 1], y, "youden")
    assert rec["youden"]["threshold"] == pytest.approx(expected[0], abs=1e-4)
    # and its TTA twin from the same model's validation probabilities averaged over the trained
    # flips / quarter turns, the probabilities that prediction with inference.tta thresholds
    flags = tta_flags(hp["cfg"]["train"]["augmentation"])
    assert flags == {"flips": True, "rot90": True}
    probs_tta = inference.predict_proba(model, torch.utils.data.DataLoader(ds, batch_size=8),
                                        torch.device("cpu"), tta=flags)
    assert not np.allclose(probs_tta, probs, atol=1e-6)  # TTA changed the probabilities
    rec_tta = hp["validation_tta"]
    assert rec_tta["kind"] == "binary" and rec_tta["n_val"] == 4
    for method in thresholds.METHODS:
        assert rec_tta[method]["threshold"] == pytest.approx(
            thresholds.choose(probs_tta[:, 1], y, method)[0], abs=1e-4)

    out = call(cfg, "predict", 1)
    pred = pd.read_csv(out, keep_default_na=False)
    t = rec["youden"]["threshold"]
    assert (pred["threshold_method"] == "youden").all() and np.allclose(pred["threshold"], t, atol=1e-5)
    assert (pred["pred_class_thresholded"] == np.where(pred["prob_pneumonia"] >= t, "pneumonia", "normal")).all()
    assert (pred["pred_class"] == np.where(pred["prob_pneumonia"] > pred["prob_normal"], "pneumonia", "normal")).all()
    m = call(cfg, "metrics", 1)
    assert m["thresholded"]["method"] == "youden" and m["thresholded"]["threshold"] == pytest.approx(t, abs=1e-5)
    truth = (pred["true_class"] == "pneumonia").to_numpy()
    assert m["thresholded"]["accuracy"] == pytest.approx(np.mean(truth == (pred["prob_pneumonia"] >= t)))

    # what the model gets wrong: the thresholded decision's mistakes, surest first, with thumbnails
    rd = out.parent
    mistakes = m["mistakes"]
    assert mistakes["decision"] == "thresholded"
    for c in ("normal", "pneumonia"):
        wrong = pred[(pred["true_class"] == c) & (pred["pred_class_thresholded"] != c)]
        listed = mistakes["per_class"][c]
        assert sorted(r["file"] for r in listed) == sorted(wrong["file"])  # fewer than 6: all of them
        assert [r["prob"] for r in listed] == sorted((r["prob"] for r in listed), reverse=True)
        assert all((rd / r["thumbnail"]).is_file() for r in listed)
    call(cfg, "report")
    page = Path(job(cfg, "report").output["html"]).read_text()
    assert "Argmax and thresholded decisions" in page and "chosen on the validation set (youden)" in page
    assert "Most confident mistakes" in page
    n_listed = sum(len(v) for v in mistakes["per_class"].values())
    assert page.count('style="image-rendering:pixelated"') == n_listed

    # inference.tta takes the TTA record, without TTA the plain one (a marked threshold tells them apart)
    marked = tmp_path / "marked.ckpt"
    ck = torch.load(ckpt, weights_only=True)
    ck["hyper_parameters"]["validation_tta"]["youden"]["threshold"] = 0.123
    torch.save(ck, marked)
    manifest_test = job(cfg, "predict", 1).input["manifest"]
    for tta, expected_t in ((True, 0.123), (False, t)):
        rd = tmp_path / f"marked_tta_{tta}"
        rd.mkdir()
        tcfg = {**cfg, "inference": {**cfg["inference"], "tta": tta}}
        got = pd.read_csv(inference.predict(tcfg, 1, marked, manifest_test, rd), keep_default_na=False)
        assert np.allclose(got["threshold"], expected_t, atol=1e-6)

    # a checkpoint from before the record: argmax still predicts, youden names the fix
    old = tmp_path / "old.ckpt"
    ck = torch.load(ckpt, weights_only=True)
    del ck["hyper_parameters"]["validation"], ck["hyper_parameters"]["validation_tta"]
    torch.save(ck, old)
    rd = tmp_path / "old_run"
    rd.mkdir()
    argmax_cfg = {**cfg, "inference": {**cfg["inference"], "threshold": "argmax"}}
    plain = pd.read_csv(inference.predict(argmax_cfg, 1, old, job(cfg, "predict", 1).input["manifest"], rd))
    assert "pred_class_thresholded" not in plain and (plain["pred_class"] == pred["pred_class"]).all()
    with pytest.raises(BioflowError, match="inference.threshold: youden .* holds no validation record"):
        inference.predict(cfg, 1, old, job(cfg, "predict", 1).input["manifest"], rd)


@pytest.mark.parametrize("n_classes, multilabel, augmentation, stored", [
    (2, False, {"enabled": True, "flips": True, "rot90": False}, True),
    (3, True, {"enabled": True, "flips": ["x"], "rot90": False}, True),
    (3, False, {"enabled": True, "flips": True, "rot90": True}, False),  # multi-class: no threshold
    (2, False, {"enabled": False, "flips": True, "rot90": True}, False),  # TTA = the plain pass
    (2, False, {"enabled": True, "flips": False, "rot90": False}, False),
])
def test_a_tta_record_only_where_a_threshold_and_tta_exist(n_classes, multilabel, augmentation, stored):
    from types import SimpleNamespace

    from bioflow.inference.classification import threshold_record
    from bioflow.training.classification import tta_validation
    module = SimpleNamespace(train_cfg={"augmentation": augmentation})
    assert (tta_validation(module, None, multilabel, n_classes) is not None) == stored
    plain, tta = {"youden": {"threshold": 0.4}}, {"youden": {"threshold": 0.6}}
    assert threshold_record({"validation": plain, "validation_tta": tta}, True) is tta
    assert threshold_record({"validation": plain, "validation_tta": tta}, False) is plain
    assert threshold_record({"validation": plain}, True) is plain  # older checkpoint / no TTA record
    assert threshold_record({}, True) is None


@pytest.mark.parametrize("workflow, extra, ok", [
    ("classification", {"model": {"n_classes": 2}}, True),
    ("classification", {"model": {"n_classes": 3, "multilabel": True}, "data": {"labels_csv": "l.csv"}}, True),
    ("classification", {"model": {"n_classes": 3}}, False),
    ("semantic_segmentation", {"inference": {"padding": 8}}, False),
    # auto is the argmax for a multi-class model (the templates set it for any class count)
    ("classification", {"model": {"n_classes": 3}, "inference": {"threshold": "auto"}}, True),
    ("semantic_segmentation", {"inference": {"threshold": "auto"}}, False),
])
def test_the_threshold_is_checked_against_the_model_kind(workflow, extra, ok):
    from bioflow import workflows
    from bioflow.config import deep_update

    cfg = deep_update({"experiment": {"name": "x", "workflow": workflow}, "data": {"train": "t", "test": "s"},
                       "model": {"architecture": "simple_cnn"}, "inference": {"threshold": "youden"}}, extra)
    if ok:
        workflows.validate_config(cfg)
    else:
        with pytest.raises(BioflowError, match="inference.threshold"):
            workflows.validate_config(cfg)
