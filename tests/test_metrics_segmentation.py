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


def _image_counts(rng, n, quality):
    """Foreground (TP, FP, FN) rows of ``n`` images whose IoU is around ``quality``."""
    out = []
    for _ in range(n):
        tp = rng.integers(200, 2000)
        err = tp * (1 - quality) / quality
        fp = int(rng.uniform(0.2, 0.8) * err)
        c = np.zeros((3, 3), dtype=np.int64)  # n_classes 2: class 0, class 1, foreground
        c[1] = c[2] = (tp, fp, int(err - fp))
        out.append(c)
    return out


def _naive_ci(counts, n_resamples, seed):
    """The bootstrap written as a loop over resamples: the reference for the vectorised one."""
    fg = np.stack(counts)[:, 2].astype(float)
    rng = np.random.default_rng(seed)
    means, pooled = [], []
    for _ in range(n_resamples):
        pick = fg[rng.integers(0, len(fg), len(fg))]
        means.append(np.mean(pick[:, 0] / pick.sum(1)))
        tp, fp, fn = pick.sum(0)
        pooled.append(tp / (tp + fp + fn))
    return {k: np.percentile(v, [2.5, 97.5]) for k, v in (("foreground", means), ("foreground_pooled", pooled))}


def test_bootstrap_ci_agrees_with_a_plain_loop_and_holds_the_estimate():
    rng = np.random.default_rng(3)
    counts = _image_counts(rng, 60, 0.8)
    ci = ms.bootstrap_ci(counts, 2, 2000, seed=1)
    ref = _naive_ci(counts, 2000, seed=7)  # another seed: the same distribution, resampled again
    summary = ms.summarize(counts, 2)
    for key in ("foreground", "foreground_pooled"):
        lo, hi = ci[key]
        assert lo < summary[key] < hi
        assert np.allclose([lo, hi], ref[key], atol=0.01), (key, ci[key], ref[key])
    # more images, narrower interval
    wide = ms.bootstrap_ci(counts[:10], 2, 2000)["foreground_pooled"]
    assert wide[1] - wide[0] > ci["foreground_pooled"][1] - ci["foreground_pooled"][0]


def test_bootstrap_ci_edge_cases():
    one = _image_counts(np.random.default_rng(0), 1, 0.7)
    assert ms.bootstrap_ci(one, 2, 1000) == {}            # one image: nothing to resample
    assert ms.bootstrap_ci(one * 5, 2, 0) == {}           # bootstrap off
    same = ms.bootstrap_ci(one * 5, 2, 200)               # identical images: no spread
    v = ms.summarize(one, 2)["foreground_pooled"]
    assert same["foreground_pooled"] == pytest.approx([v, v]) and same["foreground"] == pytest.approx([v, v])
    # images with no foreground anywhere (IoU undefined) are left out of the per-image mean
    empty = np.zeros((3, 3), dtype=np.int64)
    mixed = ms.bootstrap_ci(one * 4 + [empty] * 4, 2, 300)
    assert mixed["foreground"] == pytest.approx([v, v])
