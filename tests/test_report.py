"""bioflow.report: aggregation math and the HTML page."""
import json

import pytest

from bioflow import report
from bioflow.errors import BioflowError

CFG = {"experiment": {"name": "e", "workflow": "classification", "ndim": 2}, "report": {"title": None, "max_charts": 4}}


def test_flatten_keeps_nested_scalars_and_skips_matrices():
    flat = report.flatten_metrics({"accuracy": 0.5, "confusion_matrix": [[1, 2], [3, 4]],
                                   "iou": {"per_image": {"foreground": 0.7, "class_1": 0.6}},
                                   "labels_available": True, "class_names": ["a", "b"]})
    assert flat == {"accuracy": 0.5, "iou.per_image.foreground": 0.7, "iou.per_image.class_1": 0.6}


def test_aggregate_mean_and_sample_sd():
    agg = report.aggregate({"r1": {"a": 1.0, "b": 2.0}, "r2": {"a": 3.0}, "r3": {"a": 5.0, "b": float("nan")}})
    assert agg["a"]["mean"] == pytest.approx(3.0)
    assert agg["a"]["sd"] == pytest.approx(2.0)  # sample sd of 1, 3, 5
    assert agg["b"] == {"mean": 2.0, "sd": 0.0, "n": 1}


def test_report_page(tmp_path):
    from PIL import Image

    dirs = []
    for i, acc in enumerate([0.8, 0.9], start=1):
        d = tmp_path / f"e_{i}"
        (d / "charts").mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"accuracy": acc, "ci95": {"accuracy": [acc - 0.1, acc + 0.05]},
                                                    "per_class": {"a": {"f1": 0.5}}}))
        (d / "train_summary.json").write_text(json.dumps({"epochs": 3, "best_score": 0.7}))
        Image.new("RGB", (8, 8)).save(d / "charts" / "loss.png")
        dirs.append(d)
    out = report.run(CFG, dirs, tmp_path / "report.html")
    page = out.read_text()
    assert "0.8500 ± 0.0707" in page  # mean ± sample sd of 0.8, 0.9
    assert page.count("data:image/png;base64") == 2
    assert "95% bootstrap" in page and "Provenance" in page and "e_2" in page
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp file left


def test_report_names_missing_metrics(tmp_path):
    with pytest.raises(BioflowError, match="e_1/metrics.json"):
        report.run(CFG, [tmp_path / "e_1"], tmp_path / "r.html")
