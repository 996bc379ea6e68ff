"""What the model gets wrong (the report's pictures): the most confident mistakes per class,
the worst / median / best segmentation images with their IoU, and the report sections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from bioflow.metrics import gallery
from bioflow.metrics import segmentation as ms
from bioflow.report import review


def test_mistakes_are_the_wrong_decisions_most_confident_first():
    names = ["a", "b", "c"]
    df = pd.DataFrame({
        "file": [f"{i}.png" for i in range(6)],
        "true_class": ["a", "a", "a", "b", "b", "c"],
        "pred_class": ["b", "c", "a", "a", "b", "c"],
        "prob_a": [0.2, 0.1, 0.9, 0.95, 0.1, 0.0],
        "prob_b": [0.7, 0.3, 0.05, 0.05, 0.8, 0.1],
        "prob_c": [0.1, 0.6, 0.05, 0.0, 0.1, 0.9]})
    per = gallery._mistake_rows(df, names, False, k=5)
    assert [m["file"] for m in per["a"]] == ["0.png", "1.png"]  # p 0.7 before p 0.6; 2.png is right
    assert per["a"][0] == {"index": 0, "file": "0.png", "predicted": "b", "prob": 0.7, "prob_true": 0.2}
    assert [m["file"] for m in per["b"]] == ["3.png"] and per["c"] == []
    assert len(gallery._mistake_rows(df, names, False, k=1)["a"]) == 1
    # a thresholded decision, when there, is the one judged
    df["pred_class_thresholded"] = ["a", "a", "a", "b", "b", "c"]
    assert all(v == [] for v in gallery._mistake_rows(df, names, False, k=5).values())


def test_multilabel_mistakes_are_false_positives_and_negatives_per_label():
    df = pd.DataFrame({"file": ["0", "1", "2", "3"], "prob_x": [0.9, 0.2, 0.6, 0.05],
                       "pred_x": [1, 0, 1, 0], "true_x": [0, 1, 1, 0]})
    per = gallery._mistake_rows(df, ["x"], True, k=5)["x"]
    assert [(m["file"], m["error"]) for m in per] == [("0", "false positive"), ("1", "false negative")]
    assert per[0]["confidence"] == pytest.approx(0.9) and per[1]["confidence"] == pytest.approx(0.8)


def test_pick_examples_worst_median_best():
    scores = [("a", 0.9), ("b", None), ("c", 0.1), ("d", 0.5), ("e", float("nan")), ("f", 0.7)]
    assert gallery.pick_examples(scores) == [("worst", "c", 0.1), ("median", "f", 0.7), ("best", "a", 0.9)]
    assert gallery.pick_examples([("a", 0.3)]) == [("worst", "a", 0.3)]
    assert gallery.pick_examples([("a", None)]) == []


def test_overlay_panels_tint_truth_and_prediction_where_they_are():
    image = np.linspace(0, 1, 40 * 50, dtype=np.float32).reshape(40, 50, 1)
    gt = np.zeros((40, 50), np.uint8)
    gt[5:15, 5:15] = 1
    pred = np.zeros_like(gt)
    pred[20:30, 30:40] = 1
    panels, z = gallery.overlay_panels(image, gt, pred, 2)
    assert z is None and panels.shape == (40, 3 * 50 + 2 * 4, 3) and panels.dtype == np.uint8
    plain, truth, predicted = panels[:, :50], panels[:, 54:104], panels[:, 108:158]
    changed_t = np.any(truth != plain, -1)
    changed_p = np.any(predicted != plain, -1)
    assert np.array_equal(changed_t, gt > 0) and np.array_equal(changed_p, pred > 0)
    # 3D: the slice with the most foreground is shown
    vol = np.zeros((5, 40, 50, 1), np.float32)
    g3 = np.zeros((5, 40, 50), np.uint8)
    g3[3, 5:15, 5:15] = 1
    _, z = gallery.overlay_panels(vol, g3, np.zeros_like(g3), 3)
    assert z == 3
    # large images are shown subsampled
    big, _ = gallery.overlay_panels(np.zeros((2000, 1000, 1), np.float32), np.zeros((2000, 1000), np.uint8),
                                    np.zeros((2000, 1000), np.uint8), 2)
    assert big.shape[0] <= gallery.OVERLAY_MAX


def test_segmentation_metrics_write_worst_median_best_overlays_and_the_report_shows_them(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    run_dir = tmp_path / "run"
    (run_dir / "per_image").mkdir(parents=True)
    test = []
    # prediction = truth shifted by i pixels: IoU falls with i
    for i, shift in enumerate((0, 2, 5, 9)):
        img = rng.random((32, 32)).astype(np.float32)
        gt = np.zeros((32, 32), np.uint8)
        gt[8:20, 8:20] = 1
        pred = np.roll(gt, shift, axis=1)
        tifffile.imwrite(tmp_path / "x" / f"im{i}.tif", img)
        tifffile.imwrite(tmp_path / "y" / f"im{i}.tif", gt)
        tifffile.imwrite(run_dir / "per_image" / f"im{i}.tif", pred)
        test.append({"path": str(tmp_path / "x" / f"im{i}.tif"), "mask": str(tmp_path / "y" / f"im{i}.tif"),
                     "shape": [32, 32, 1], "label": None, "class_name": None})
    manifest = tmp_path / "manifest_test.json"
    manifest.write_text(json.dumps({"workflow": "semantic_segmentation", "part": "test", "ndim": 2, "channels": 1,
                                    "classes": ["0", "1"], "splits": {"test": test}}))
    cfg = {"experiment": {"ndim": 2}, "model": {"n_classes": 2}, "data": {"test_has_labels": True},
           "train": {"ignore_index": None}, "metrics": {"bootstrap": 0}}
    out = ms.evaluate(cfg, 1, manifest, run_dir)
    per_image = pd.read_csv(run_dir / "metrics_per_image.csv").set_index("file")["per_image_iou_foreground"]
    ex = {e["which"]: e for e in out["examples"]}
    assert (ex["worst"]["file"], ex["best"]["file"]) == ("im3.tif", "im0.tif")
    assert ex["median"]["file"] == "im1.tif"  # sorted: im3, im2, im1, im0 -> index 2
    for e in out["examples"]:
        assert e["iou_foreground"] == pytest.approx(per_image[e["file"]])
        png = run_dir / e["image"]
        assert png.is_file() and Image.open(png).size == (3 * 32 + 8, 32)
    assert ex["best"]["iou_foreground"] == pytest.approx(1.0)
    html = "".join(review.overlays_section([run_dir]))
    assert html.count("data:image/png;base64,") == 3
    assert "im3.tif, foreground IoU " + f"{per_image['im3.tif']:.4f}" in html


def test_threshold_section_compares_argmax_and_thresholded(tmp_path):
    m = {"accuracy": 0.8, "ci95": {"accuracy": [0.7, 0.9]},
         "thresholded": {"method": "youden", "threshold": 0.31, "positive_class": "pos", "accuracy": 0.85,
                         "ci95": {"accuracy": [0.75, 0.93]}}}
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    html = "".join(review.threshold_section([tmp_path]))
    assert "threshold 0.3100 on p(pos)" in html and "chosen on the validation set (youden)" in html
    assert "<td>accuracy</td><td>0.8000 [0.7000, 0.9000]</td><td>0.8500 [0.7500, 0.9300]</td>" in html
    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": 0.8}))
    assert review.threshold_section([tmp_path]) == []
