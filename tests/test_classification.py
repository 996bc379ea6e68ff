"""Classification stages end to end on tiny data: train -> predict -> evaluate, 2D and 3D,
unlabelled test sets, multi-label + metadata; the size policy; the in-memory cache."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from bioflow.layout import Layout
from bioflow.data import normalization
from bioflow.data.classification import fit_to_size
from helpers_stages import call, job, prepare

FAST_TRAIN = {"epochs": 1, "batch_size": 8, "n_sample_images": 1, "class_weights": "auto",
              "augmentation": {"affine": True, "brightness_contrast": True, "gaussian_noise": True}}


def _prepare(cfg):
    prepare(cfg)
    t = job(cfg, "train", 1)
    return Path(t.input["manifest"]), Path(t.input["norm"])


def _run_all(cfg, run_id=1):
    """Every stage on its own config slice, as the rules run them."""
    prepare(cfg)
    summary = call(cfg, "train", run_id)
    call(cfg, "predict", run_id)
    metrics = call(cfg, "metrics", run_id)
    rd = Path(Layout.of(cfg).run_dir(run_id))
    ckpt = Path(job(cfg, "train", run_id).output["ckpt"])
    return summary, pd.read_csv(rd / "predictions.csv", keep_default_na=False), metrics, rd, ckpt


def test_2d_end_to_end_predictions_and_metrics(make_cfg, pneumonia_folders):
    cfg = make_cfg(data={"train": str(pneumonia_folders / "train"), "test": str(pneumonia_folders / "test"),
                         "val_split": 0.25, "patch_size": [32, 32]},
                   model={"architecture": "simple_cnn", "features": [8, 16]},
                   train=FAST_TRAIN, inference={"tta": True}, metrics={"bootstrap": 20})
    summary, pred, m, rd, ckpt = _run_all(cfg)
    assert summary["monitor"] == "val_auc" and summary["epochs_run"] == 1
    assert list(pred.columns) == ["file", "true_class", "pred_class", "prob_normal", "prob_pneumonia", "precision"]
    assert set(pred["precision"].astype(str)) <= {"32", "bf16"}  # the policy the model ran at
    assert len(pred) == 6 and set(pred["true_class"]) == {"normal", "pneumonia"}
    assert pred["file"].str.startswith(("normal/", "pneumonia/")).all()
    np.testing.assert_allclose(pred[["prob_normal", "prob_pneumonia"]].sum(axis=1), 1.0, atol=1e-5)
    for k in ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "auc",
              "confusion_matrix", "per_class", "ci95", "class_names"):
        assert k in m
    assert m["class_names"] == ["normal", "pneumonia"] and np.sum(m["confusion_matrix"]) == 6
    assert json.loads((rd / "metrics.json").read_text())["accuracy"] == m["accuracy"]
    assert (rd / "metrics.csv").is_file() and (rd / "confusion_matrix.png").is_file()
    assert (rd / "charts" / "aug_samples_0.png").is_file() and (rd / "charts" / "val_auc.png").is_file()
    # the checkpoint carries what inference needs (config, classes) besides the statistics
    hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hp["class_names"] == ["normal", "pneumonia"] and hp["cfg"]["data"]["patch_size"] == [32, 32]


def test_unlabelled_test_set_in_one_folder(make_cfg, pneumonia_folders):
    flat = pneumonia_folders / "flat_test"
    flat.mkdir()
    for p in (pneumonia_folders / "test").rglob("*.png"):
        shutil.copy2(p, flat / p.name)
    cfg = make_cfg(data={"train": str(pneumonia_folders / "train"), "test": str(flat),
                         "test_has_labels": False, "val_split": 0.25, "patch_size": [28, 28]},
                   model={"architecture": "simple_cnn", "features": [4, 8]},
                   train={**FAST_TRAIN, "augmentation": {"enabled": False}})
    _, pred, m, rd, _ = _run_all(cfg)
    assert (pred["true_class"] == "").all() and len(pred) == 6
    assert m == {"labels_available": False, "n_predictions": 6, "class_names": ["normal", "pneumonia"]}
    assert json.loads((rd / "metrics.json").read_text())["labels_available"] is False


def _volumes(root: Path, n_per_class=6, seed=0):
    """Two classes of small volumes of varied sizes: bright blob (class b) or not (class a)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_per_class), ("test", 2)):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                shape = (8 + i % 3, 14 + i % 4, 14 + i % 4)
                v = rng.normal(100, 10, shape)
                if cls == "b":
                    v[2:6, 4:10, 4:10] += 80
                tifffile.imwrite(d / f"{cls}{i}.tif", v.astype(np.uint16))


@pytest.mark.parametrize("resize", ["resize", "crop_pad"])
def test_3d_end_to_end(make_cfg, tmp_path, resize):
    _volumes(tmp_path / "vol")
    cfg = make_cfg(experiment={"ndim": 3},
                   data={"train": str(tmp_path / "vol/train"), "test": str(tmp_path / "vol/test"),
                         "val_split": 0.34, "patch_size": [8, 16, 16], "resize": resize},
                   model={"architecture": "resnet3d", "features": [4, 8]},
                   train={**FAST_TRAIN, "epochs": 2}, inference={"tta": True}, metrics={"bootstrap": 10})
    summary, pred, m, rd, _ = _run_all(cfg)
    assert summary["epochs_run"] == 2 and len(pred) == 4
    assert list(pred.columns) == ["file", "true_class", "pred_class", "prob_a", "prob_b", "precision"]
    assert m["labels_available"] and m["confusion_matrix"] and len(m["confusion_matrix"]) == 2


def test_multilabel_with_metadata(make_cfg, tmp_path):
    rng = np.random.default_rng(0)
    rows, meta = [], []
    for split, n in (("train", 16), ("test", 4)):
        d = tmp_path / "ml" / split
        d.mkdir(parents=True)
        for i in range(n):
            lab = [i % 2, (i // 2) % 2, int(i % 3 == 0)]
            img = rng.integers(0, 50, (16, 16), dtype=np.uint8) + np.uint8(100 * lab[0])
            name = f"{split}_{i}.tif"
            tifffile.imwrite(d / name, img)
            rows.append({"file": name, "cat": lab[0], "dog": lab[1], "owl": lab[2]})
            meta.append({"file": name, "age": float(i), "size": float(lab[1] * 3 + rng.random())})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    pd.DataFrame(meta).to_csv(tmp_path / "meta.csv", index=False)
    cfg = make_cfg(data={"train": str(tmp_path / "ml/train"), "test": str(tmp_path / "ml/test"),
                         "labels_csv": str(tmp_path / "labels.csv"), "metadata_csv": str(tmp_path / "meta.csv"),
                         "val_split": 0.25, "patch_size": [16, 16]},
                   model={"architecture": "simple_cnn", "features": [4, 8], "n_classes": 3, "multilabel": True,
                          "metadata_units": [8], "dropout": 0.1},
                   train={**FAST_TRAIN, "epochs": 2}, inference={"tta": True}, metrics={"bootstrap": 10})
    summary, pred, m, rd, ckpt = _run_all(cfg)
    for lab in ("cat", "dog", "owl"):
        assert {f"prob_{lab}", f"pred_{lab}", f"true_{lab}"} <= set(pred.columns)
        assert set(pred[f"pred_{lab}"]) <= {0, 1}
    assert pred.loc[pred["file"] == "test_1.tif", "true_class"].item() == "cat"
    assert m["multilabel"] and set(m["per_label"]) == {"cat", "dog", "owl"}
    assert {"auc", "f1"} <= set(m["per_label"]["cat"])
    hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hp["n_metadata"] == 2 and hp["multilabel"]


def test_fit_to_size_policies():
    img = np.arange(2 * 6 * 10, dtype=np.float32).reshape(2, 6, 10)
    out = fit_to_size(img, (8, 8), "crop_pad")
    assert out.shape == (2, 8, 8)
    np.testing.assert_array_equal(out[:, 1:7, :], img[:, :, 1:9])  # x centre-cropped, y padded
    assert (out[:, 0] == 0).all() and (out[:, 7] == 0).all()
    r = fit_to_size(img, (12, 20), "resize")
    assert r.shape == (2, 12, 20) and r.min() >= img.min() - 1e-4 and r.max() <= img.max() + 1e-4
    v = np.ones((1, 4, 6, 6), np.float32)
    np.testing.assert_allclose(fit_to_size(v, (8, 8, 8), "resize"), 1.0, rtol=1e-6)
    assert fit_to_size(v, (2, 8, 4), "crop_pad").shape == (1, 2, 8, 4)


def test_preprocessed_images_are_cached_once(make_cfg, pneumonia_folders, monkeypatch):
    from bioflow.data import classification as dc
    from bioflow.data.manifest import load_manifest
    # num_workers 0: the reads are counted in this process (auto gives workers on a GPU machine)
    cfg = make_cfg(data={"train": str(pneumonia_folders / "train"), "test": str(pneumonia_folders / "test"),
                         "val_split": 0.25, "patch_size": [28, 28]}, train={"num_workers": 0})
    man, norm = _prepare(cfg)
    dc.clear_cache()
    calls = []
    real = dc.read_entry_image
    monkeypatch.setattr(dc, "read_entry_image", lambda m, e: calls.append(e["path"]) or real(m, e))
    dm = dc.ClassificationDataModule(load_manifest(man), normalization.load_stats(norm), cfg["data"],
                                     cfg["train"])
    for _ in range(2):
        for b in dm.val_dataloader():
            assert b["image"].shape[1:] == (1, 28, 28)
    assert len(calls) == len(dm.val_dataset)  # read once, served from memory the second time


class _Budgets(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        from bioflow.data import classification as dc
        return dc._cache_budget()


def test_cache_budget_is_split_between_loader_workers(monkeypatch):
    # each worker process caches on its own: together they stay within BIOFLOW_CACHE_MB
    from bioflow.data import classification as dc
    monkeypatch.setenv("BIOFLOW_CACHE_MB", "100")
    assert dc._cache_budget() == 100 * 2**20
    got = [int(b) for b in torch.utils.data.DataLoader(_Budgets(), batch_size=None, num_workers=2)]
    assert got == [50 * 2**20] * 4
