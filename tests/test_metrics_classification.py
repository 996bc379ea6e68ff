"""Classification metrics against sklearn on hand-made predictions; the metrics stage files."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from bioflow.metrics.classification import (binary_auc, bootstrap_ci, classification_metrics, evaluate,
                                            macro_auc, multilabel_metrics)
from bioflow.training.classification import metric_functions


def _data(n=60, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += 1.0  # better than chance
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


@pytest.mark.parametrize("c", [2, 3, 5])
def test_against_sklearn(c):
    y, p = _data(c=c, seed=c)
    names = [f"k{i}" for i in range(c)]
    m = classification_metrics(y, p, names)
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["precision_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro", zero_division=0))
    assert m["recall_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro", zero_division=0))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    sk_auc = skm.roc_auc_score(y, p[:, 1]) if c == 2 else skm.roc_auc_score(y, p, multi_class="ovr")
    assert m["auc"] == pytest.approx(sk_auc)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(c)).tolist()
    pr, rc, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=range(c), zero_division=0)
    for i, name in enumerate(names):
        assert m["per_class"][name]["precision"] == pytest.approx(pr[i])
        assert m["per_class"][name]["f1"] == pytest.approx(f1[i])
        assert m["per_class"][name]["support"] == sup[i]


def test_hand_made_binary_case():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.9])
    m = classification_metrics(y, np.stack([1 - p1, p1], 1), ["neg", "pos"])
    assert m["accuracy"] == 0.5 and m["confusion_matrix"] == [[1, 1], [1, 1]]
    assert m["auc"] == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ordered correctly
    assert binary_auc([0, 1, 1], [0.5, 0.5, 0.7]) == pytest.approx(0.75)  # tie counts one half
    assert np.isnan(binary_auc([1, 1], [0.2, 0.3]))


def test_auc_with_a_missing_class_uses_present_classes():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.5, 0.2]])
    assert macro_auc(y, p) == pytest.approx(1.0)


def test_multilabel_against_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (40, 3))
    p = np.clip(y * 0.4 + rng.random((40, 3)) * 0.6, 0, 1)
    m = multilabel_metrics(y, p, ["a", "b", "c"])
    pred = (p >= 0.5).astype(int)
    for j, n in enumerate("abc"):
        assert m["per_label"][n]["auc"] == pytest.approx(skm.roc_auc_score(y[:, j], p[:, j]))
        assert m["per_label"][n]["f1"] == pytest.approx(skm.f1_score(y[:, j], pred[:, j]))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p, average="macro"))


def test_bootstrap_ci_brackets_the_estimate_and_is_seeded():
    y, p = _data(n=200, c=2, seed=1)
    m = classification_metrics(y, p, ["a", "b"])
    ci = bootstrap_ci(y, p, ["a", "b"], 200, seed=0)
    for k in ("accuracy", "auc", "f1_macro"):
        lo, hi = ci[k]
        assert lo <= m[k] <= hi and hi - lo < 0.3
    assert bootstrap_ci(y, p, ["a", "b"], 200, seed=0) == ci
    assert bootstrap_ci(y, p, ["a", "b"], 0) == {}


def test_epoch_metric_functions():
    import torch
    fns = metric_functions(False)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    target = torch.tensor([0, 1, 1])
    assert fns["acc"](logits, target) == pytest.approx(2 / 3)
    assert fns["auc"](logits, target) == pytest.approx(1.0)
    assert fns["auc"](logits, torch.tensor([1, 1, 1])) == 0.5  # undefined -> neutral, not nan
    assert fns["bal_acc"](logits, target) == pytest.approx(0.75)


def test_epoch_metrics_match_the_metrics_stage():
    """torchmetrics during training, sklearn in the metrics stage: the same numbers, a class
    missing from the val set left out of AUC and balanced accuracy in both."""
    import torch
    y, p = _data(n=50, c=4, seed=7)
    y[y == 3] = 0  # class 3 absent
    logits = torch.log(torch.from_numpy(p))
    fns = metric_functions(False)
    stage = classification_metrics(y, p, list("abcd"))
    target = torch.from_numpy(y)
    assert fns["acc"](logits, target) == pytest.approx(stage["accuracy"])
    assert fns["auc"](logits, target) == pytest.approx(stage["auc"], abs=1e-5)
    assert fns["bal_acc"](logits, target) == pytest.approx(stage["balanced_accuracy"])
    rng = np.random.default_rng(3)
    ym = rng.integers(0, 2, (40, 3))
    ym[:, 2] = 1  # a label without negatives: AUC undefined, left out
    pm = np.clip(ym * 0.4 + rng.random((40, 3)) * 0.6, 0.01, 0.99)
    ml = metric_functions(True)
    mstage = multilabel_metrics(ym, pm, list("abc"))
    mlogits = torch.logit(torch.from_numpy(pm))
    assert ml["auc"](mlogits, torch.from_numpy(ym).float()) == pytest.approx(mstage["auc"], abs=1e-5)
    assert ml["f1"](mlogits, torch.from_numpy(ym).float()) == pytest.approx(mstage["f1_macro"])


def _manifest(tmp_path, classes, multilabel=False):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"workflow": "classification", "ndim": 2, "channels": 1, "classes": classes,
                                "multilabel": multilabel, "splits": {"train": [], "val": [], "test": []}}))
    return path


def test_evaluate_stage_files(tmp_path):
    y, p = _data(n=30, c=3, seed=4)
    names = ["x", "y", "z"]
    df = pd.DataFrame({"file": [f"{i}.png" for i in range(30)], "true_class": [names[i] for i in y],
                       "pred_class": [names[i] for i in p.argmax(1)],
                       **{f"prob_{n}": p[:, i] for i, n in enumerate(names)}})
    df.to_csv(tmp_path / "predictions.csv", index=False)
    cfg = {"data": {"test_has_labels": True}, "model": {"multilabel": False}, "metrics": {"bootstrap": 50}}
    evaluate(cfg, 1, _manifest(tmp_path, names), tmp_path)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert set(on_disk["ci95"]) >= {"accuracy", "auc", "f1_macro"} and on_disk["class_names"] == names
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert {"accuracy", "auc", "f1[x]"} <= set(table["metric"])
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0
    # without labels: no error, a marker file
    df["true_class"] = ""
    df.to_csv(tmp_path / "predictions.csv", index=False)
    out = evaluate({**cfg, "data": {"test_has_labels": False}}, 1, _manifest(tmp_path, names), tmp_path)
    assert out["labels_available"] is False and out["n_predictions"] == 30
