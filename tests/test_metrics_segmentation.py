"""IoU / Dice against hand-computed cases, and the metrics stage layout."""

import numpy as np
import pytest

from bioflow.metrics import segmentation as ms


def test_binary_hand_computed():
    gt = np.array([[0, 1, 1], [0, 1, 0]])
    pr = np.array([[1, 1, 0], [0, 1, 0]])
    c = ms.confusion_counts(pr, gt, 2)
    # class 1: TP 2, FP 1, FN 1 ; class 0: TP 2, FP 1, FN 1 ; foreground == class 1
    assert c.tolist() == [[2, 1, 1], [2, 1, 1], [2, 1, 1]]
    assert ms.iou(pr, gt, 2) == pytest.approx({"class_0": 0.5, "class_1": 0.5, "foreground": 0.5})
    assert ms.dice(pr, gt, 2)["foreground"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_multiclass_foreground_is_union_of_non_background():
    gt = np.array([0, 1, 2, 2, 0, 1])
    pr = np.array([0, 2, 2, 1, 1, 1])
    c = ms.confusion_counts(pr, gt, 3)
    assert c[1].tolist() == [1, 2, 1]      # class 1: TP idx5; FP idx3,4; FN idx1
    assert c[2].tolist() == [1, 1, 1]      # class 2: TP idx2; FP idx1; FN idx3
    assert c[3].tolist() == [4, 1, 0]      # foreground: TP 1,2,3,5; FP 4
    v = ms.iou(pr, gt, 3)
    assert v["class_1"] == pytest.approx(0.25) and v["foreground"] == pytest.approx(0.8)


def test_ignore_index_and_empty():
    gt = np.array([0, 1, 255, 255])
    pr = np.array([0, 1, 1, 0])
    assert ms.iou(pr, gt, 2, ignore_index=255)["foreground"] == 1.0
    # nothing predicted, nothing there: undefined, reported as None and skipped in means
    assert ms.iou(np.zeros(4, int), np.zeros(4, int), 2)["foreground"] is None


def test_summarize_mean_and_pooled():
    a = ms.confusion_counts(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]), 2)  # fg IoU 1/2
    b = ms.confusion_counts(np.array([1, 1, 1, 1]), np.array([1, 1, 1, 1]), 2)  # fg IoU 1
    s = ms.summarize([a, b], 2)
    assert s["foreground"] == pytest.approx(0.75)
    assert s["foreground_pooled"] == pytest.approx(5 / 6)
    assert s["n"] == 2
    assert ms.summarize([b], 2)["class_0"] is None  # class 0 absent everywhere


def test_3d_same_as_flat():
    rng = np.random.default_rng(0)
    gt, pr = rng.integers(0, 3, (4, 5, 6)), rng.integers(0, 3, (4, 5, 6))
    assert np.array_equal(ms.confusion_counts(pr, gt, 3), ms.confusion_counts(pr.ravel(), gt.ravel(), 3))
