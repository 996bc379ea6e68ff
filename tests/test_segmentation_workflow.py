"""Segmentation stages end to end on the bundled demo data (2D DSB2018, 3D nuclei), tiny runs."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from bioflow.layout import Layout
from bioflow.errors import BioflowError
from bioflow.inference.segmentation import FOLDERS
from helpers_stages import call, prepare


def _prepare(cfg):
    prepare(cfg)
    return Path(Layout.of(cfg).root)


@pytest.mark.slow
@pytest.mark.parametrize("ndim", [2, 3])
def test_train_predict_postprocess_metrics(make_cfg, dsb_folders, nuclei3d_folders, ndim):
    data = dsb_folders if ndim == 2 else nuclei3d_folders
    cfg = make_cfg("semantic_segmentation",
                   experiment={"ndim": ndim},
                   data={"train": str(data / "train"), "test": str(data / "test"), "mask_transform": "foreground",
                         "patch_size": [64, 64] if ndim == 2 else [16, 32, 32],
                         "normalization": {"type": "percentile", "per_image": True},
                         "sampling": {"foreground_bias": 0.5, "save_probability_maps": True}},
                   model={"architecture": "unet_nd" if ndim == 2 else "unet3d", "features": [4, 8, 16],
                          "residual": ndim == 3},
                   train={"epochs": 2, "steps_per_epoch": 2, "batch_size": 2, "loss": "ce_dice", "lr": 1e-3,
                          "n_sample_images": 1},
                   inference={"padding": 4, "overlap": 0.25, "tta": ndim == 2, "batch_size": 4, "full_image": True,
                              "patch_metrics": "independent" if ndim == 2 else "tiled"},
                   postprocess={"z_filter": 3, "yz_filter": 0})
    root = _prepare(cfg)
    rd = Path(Layout.of(cfg).run_dir(1))
    ckpt = root / "checkpoints" / "test_1-best.ckpt"
    summary = call(cfg, "train", 1)
    assert ckpt.is_file() and summary["monitor"] == "val_iou" and summary["best_score"] is not None
    assert list((rd / "charts").glob("patch_sample_*.png"))
    assert list((rd / "probability_maps").glob("*.tif"))

    csv = call(cfg, "predict", 1)
    table = pd.read_csv(csv)
    test_names = sorted(p.name for p in (data / "test" / "x").iterdir())
    assert sorted(table["file"]) == test_names
    for f in FOLDERS:
        for name in test_names:
            out = tifffile.imread(rd / f / name)
            gt = tifffile.imread(data / "test" / "y" / name)
            assert out.shape == gt.shape and out.dtype == np.uint8 and out.max() <= 1
    assert (rd / "patch_metrics.json").is_file()
    # the passes that ran, and the precision policy, are in the table
    expected = "tiled+whole+patches" if ndim == 2 else "tiled+whole"
    assert set(table["passes"]) <= {expected, "tiled"} and expected in set(table["passes"])
    assert set(table["precision"].astype(str)) <= {"32", "bf16"}  # all "32" on a CPU without bf16 reads as ints

    call(cfg, "postprocess", 1)
    m = call(cfg, "metrics", 1)
    saved = json.loads((rd / "metrics.json").read_text())
    assert saved["labels_available"] is True
    for metric in ("iou", "dice"):
        assert set(saved[metric]) == {"per_patch", "per_image", "full_image", "post_processing"}
        for level in saved[metric].values():
            assert {"foreground", "class_0", "class_1", "foreground_pooled"} <= set(level)
            assert level["foreground"] is None or 0 <= level["foreground"] <= 1
    assert m["iou"]["per_image"]["n"] == len(test_names)
    # 95% bootstrap intervals of the foreground scores, images (patches) resampled
    for key, (lo, hi) in saved["ci95"].items():
        metric, level, name = key.split(".")
        assert lo <= saved[metric][level][name] <= hi, key
    assert "iou.per_patch.foreground_pooled" in saved["ci95"]
    assert ("iou.per_image.foreground_pooled" in saved["ci95"]) == (len(test_names) > 1)
    assert saved["per_patch_source"] == ("independent" if ndim == 2 else "tiled")
    per_image = pd.read_csv(rd / "metrics_per_image.csv")
    assert len(per_image) == len(test_names) and "per_image_iou_foreground" in per_image
    # the report: shared tables plus the workflow's own section (per-image IoU, worst first)
    call(cfg, "save_config")
    html = Path(call(cfg, "report")).read_text()
    worst = per_image.sort_values("per_image_iou_foreground")["file"].iloc[0]
    assert "Per image, worst first" in html and html.index(worst) < html.index("Configuration")
    # what the model gets wrong: image | truth | prediction of the worst / median / best image
    examples = saved["examples"]
    scored = per_image.dropna(subset=["per_image_iou_foreground"])
    assert examples[0]["which"] == "worst"
    assert examples[0]["iou_foreground"] == pytest.approx(scored["per_image_iou_foreground"].min())
    assert examples[-1]["iou_foreground"] == pytest.approx(scored["per_image_iou_foreground"].max())
    assert len(examples) == min(3, len(scored)) and all((rd / e["image"]).is_file() for e in examples)
    assert ("z" in examples[0]) and (examples[0]["z"] is None) == (ndim == 2)
    assert "Worst, median and best test images" in html
    assert "95% bootstrap confidence intervals" in html and "iou.per_patch.foreground_pooled" in html


def test_unlabelled_test_set(make_cfg, dsb_folders):
    import shutil
    shutil.rmtree(dsb_folders / "test" / "y")
    cfg = make_cfg("semantic_segmentation",
                   data={"train": str(dsb_folders / "train"), "test": str(dsb_folders / "test"),
                         "test_has_labels": False, "mask_transform": "foreground", "patch_size": [64, 64]},
                   model={"architecture": "unet_nd", "features": [4, 8]},
                   train={"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "n_sample_images": 0},
                   inference={"full_image": False, "argmax": False})
    _prepare(cfg)
    rd = Path(Layout.of(cfg).run_dir(1))
    call(cfg, "train", 1)
    call(cfg, "predict", 1)
    assert not (rd / "patch_metrics.json").exists()
    table = pd.read_csv(rd / "predictions.csv")
    assert set(table["full_image_mode"]) == {"off"} and not (rd / "full_image").exists()
    assert set(table["passes"]) == {"tiled"}  # one forward pass per tile
    probs = tifffile.imread(rd / "per_image" / table["file"][0])
    assert probs.dtype == np.float32 and probs.shape[-1] == 2 and np.allclose(probs.sum(-1), 1, atol=1e-4)
    assert call(cfg, "metrics", 1) == {"run_id": 1, "n_classes": 2, "n_test_images": len(table),
                                         "labels_available": False}


def test_patch_size_must_fit_the_model(make_cfg, dsb_folders):
    cfg = make_cfg("semantic_segmentation",
                   data={"train": str(dsb_folders / "train"), "test": str(dsb_folders / "test"),
                         "mask_transform": "foreground", "patch_size": [48, 48]},
                   model={"architecture": "unet"}, train={"epochs": 1})
    _prepare(cfg)
    with pytest.raises(BioflowError, match="data.patch_size"):
        call(cfg, "train", 1)


def test_validation_iou_is_the_metrics_stage_iou():
    """One IoU definition: the training-time val_* equal the metrics stage's pooled scores, and a
    class absent from prediction and truth is left out of the class mean in both."""
    import torch
    from torchmetrics.functional.classification import multiclass_confusion_matrix
    from bioflow.metrics.segmentation import confusion_counts, summarize
    from bioflow.training.segmentation import val_scores
    rng = np.random.default_rng(0)
    p, t = rng.integers(0, 3, (2, 5, 6)), rng.integers(0, 3, (2, 5, 6))
    p[p == 2], t[t == 2] = 1, 1  # class 2 absent from both
    t[0, 0, 0] = 255  # ignored pixel
    cm = multiclass_confusion_matrix(torch.from_numpy(p), torch.from_numpy(t), 3, ignore_index=255).numpy()
    got = val_scores(cm, 3)
    stage = summarize([confusion_counts(p, t, 3, ignore_index=255)], 3)
    assert got["val_iou"] == pytest.approx(stage["foreground_pooled"])
    assert got["val_miou"] == pytest.approx(stage["mean"])
    assert stage["class_2"] is None  # undefined, not 1
    per_class = [stage["class_0"], stage["class_1"]]
    assert got["val_miou"] == pytest.approx(sum(per_class) / 2)
