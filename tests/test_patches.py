"""patch_dataset: grid, labelling rule, HDF5 / dataset.txt / info.json on data the test makes."""

from __future__ import annotations

import json
from collections import Counter
import os

import h5py
import numpy as np
import pytest

from helpers_stages import validate_run as validate
from bioflow.io import read_image, write_image
from bioflow.prepare import patches


def test_grid_offsets_cover_the_image_flush_to_the_border():
    assert patches.grid_offsets((100, 64), (32, 32), (32, 32)) == [
        (y, x) for y in (0, 32, 64, 68) for x in (0, 32)]
    assert patches.grid_offsets((10, 50), (32, 32), (16, 16)) == [(0, 0), (0, 16), (0, 18)]
    assert len(patches.grid_offsets((8, 40, 40), (4, 16, 16), (4, 16, 16))) == 2 * 3 * 3


def test_patch_label_rule_and_free_class():
    assert patches.patch_classes(["MT_Crack", "MT_Free"]) == (["MT_Crack", "MT_Free"], 1)
    assert patches.patch_classes(["crack", "hole"]) == (["free", "crack", "hole"], 0)
    assert patches.patch_label(0.10, 2, 0.05, 0) == 2
    assert patches.patch_label(0.04, 2, 0.05, 0) == 0
    assert patches.patch_label(0.0, 2, 0.0, 0) == 0  # no defect pixel: never a defect patch
    assert patches.patch_label(0.9, 0, 0.05, 0) == 0
    assert patches.patch_label(0.9, None, 0.05, 0) == 0
    m = np.array([[0, 255, 128, 127]], np.uint8)
    np.testing.assert_array_equal(patches.defect_mask(m), [[False, True, True, False]])
    np.testing.assert_array_equal(patches.defect_mask(np.array([[0, 1, 2]], np.uint16)), [[False, True, True]])


def _tile_set(root, rng):
    """class folders with a 64x96 image each and a mask whose defect fills known cells."""
    # crack image: defect covers patch (0,0) fully and 2% of patch (0,32)
    layout = {"MT_Crack": [((0, 0), (32, 32)), ((0, 32), (4, 5))],
              "MT_Hole": [((32, 64), (32, 32))], "MT_Free": []}
    for cls, boxes in layout.items():
        for i in range(3):
            img = rng.integers(0, 255, (64, 96), dtype=np.uint8)
            mask = np.zeros((64, 96), np.uint8)
            for (y, x), (h, w) in boxes:
                mask[y:y + h, x:x + w] = 255
            d = root / cls
            d.mkdir(parents=True, exist_ok=True)
            if i % 2:  # both supported side-by-side layouts
                write_image(d / f"img{i}.jpg", img)
                write_image(d / f"img{i}.png", mask)
            else:
                write_image(d / f"img{i}.tif", img)
                write_image(d / f"img{i}_mask.png", mask)
    return layout


def _test_part(prepared):
    """The test part's manifest when the config has a test set."""
    path = prepared / "manifest_test.json"
    return path if path.is_file() else None


def test_patch_dataset_2d_labels_files_and_rerun(make_cfg, tmp_path):
    rng = np.random.default_rng(0)
    _tile_set(tmp_path / "data", rng)
    cfg = make_cfg("patch_classification", data={"train": str(tmp_path / "data"), "val_split": 0.34},
                   model={"n_classes": 3}, patches={"size": [32, 32], "min_defect_fraction": 0.05})
    manifest = validate(cfg, tmp_path / "manifest.json")
    assert manifest["classes"] == ["MT_Crack", "MT_Free", "MT_Hole"]
    assert all(e["mask"] for s in ("train", "val") for e in manifest["splits"][s])
    out = tmp_path / "patches"
    info = patches.run(cfg, tmp_path / "manifest" / "manifest_train.json", out)
    n_img = {s: len(manifest["splits"][s]) for s in ("train", "val")}
    assert info["n_patches"] == {s: 6 * n for s, n in n_img.items()}  # 2 x 3 patches per image
    assert info["free_class"] == "MT_Free" and info["classes"] == ["MT_Crack", "MT_Free", "MT_Hole"]
    lines = (out / "dataset.txt").read_text().splitlines()
    assert lines[0].split("\t") == ["split", "source", "offset", "label", "defect_fraction"]
    assert len(lines) == 1 + sum(info["n_patches"].values())
    rows = [ln.split("\t") for ln in lines[1:]]
    for split, src, off, label, frac in rows:
        cls = os.path.basename(os.path.dirname(src))
        expect = "MT_Free"
        if cls == "MT_Crack" and off == "0,0":
            expect = "MT_Crack"  # full defect; (0,32) holds only 20/1024 < 5 %
        if cls == "MT_Hole" and off == "32,64":
            expect = "MT_Hole"
        assert label == expect, (src, off, label, frac)
    with h5py.File(out / "patches.h5") as h5:
        g = h5["train"]
        assert g["images"].shape == (info["n_patches"]["train"], 32, 32, 1)
        assert g["images"].dtype == np.uint8
        k = 4
        src = g["sources"][g["source"][k]].decode()
        y, x = g["offsets"][k]
        np.testing.assert_array_equal(g["images"][k], read_image(src)[y:y + 32, x:x + 32])
        assert [info["classes"][i] for i in g["labels"][:6]] == [r[3] for r in rows[:6]]
    assert json.loads((out / "info.json").read_text()) == info
    before = (out / "dataset.txt").read_bytes()
    patches.run(cfg, tmp_path / "manifest" / "manifest_train.json", out)
    assert (out / "dataset.txt").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_patch_dataset_3d_with_x_y_folders_and_added_free_class(make_cfg, tmp_path):
    rng = np.random.default_rng(1)
    for cls in ("spot", "streak"):
        for i in range(2):
            vol = rng.integers(0, 4000, (8, 20, 20), dtype=np.uint16)
            mask = np.zeros((8, 20, 20), np.uint8)
            mask[:4, :10, :10] = 1
            write_image(tmp_path / "d" / cls / "x" / f"v{i}.tif", vol[..., None])
            write_image(tmp_path / "d" / cls / "y" / f"v{i}.tif", mask, channels_last=False)
    cfg = make_cfg("patch_classification", experiment={"ndim": 3},
                   data={"train": str(tmp_path / "d"), "val_split": 0.25, "patch_size": [4, 10, 10]},
                   model={"n_classes": 3}, patches={"size": [4, 10, 10], "stride": [4, 10, 10]})
    validate(cfg, tmp_path / "m.json")
    info = patches.run(cfg, tmp_path / "m" / "manifest_train.json", tmp_path / "p", _test_part(tmp_path / "m"))
    assert info["classes"] == ["free", "spot", "streak"]
    total = {k: info["counts"]["train"].get(k, 0) + info["counts"]["val"].get(k, 0) for k in info["classes"]}
    assert total == {"free": 4 * 7, "spot": 2, "streak": 2}  # 8 patches per volume, 1 defect each
    with h5py.File(tmp_path / "p" / "patches.h5") as h5:
        assert h5["train"]["images"].shape[1:] == (4, 10, 10, 1) and h5["train"]["images"].dtype == np.uint16
        assert h5["train"]["offsets"].shape[1] == 3


def test_patch_dataset_on_magnetic_tiles_sample(make_cfg, shared_data, tmp_path):
    src = shared_data / "magnetic_tile_defects"
    if not src.is_dir():
        pytest.skip(f"{src} absent")
    # a few pairs per class, linked (never copied into the project)
    for cls in ("MT_Free", "MT_Crack", "MT_Blowhole"):
        jpgs = sorted((src / cls / "Imgs").glob("*.jpg"))[:4]
        d = tmp_path / "mt" / cls
        d.mkdir(parents=True)
        for j in jpgs:
            os.symlink(j, d / j.name)
            os.symlink(j.with_suffix(".png"), d / j.with_suffix(".png").name)
    cfg = make_cfg("patch_classification", data={"train": str(tmp_path / "mt"), "val_split": 0.25},
                   model={"n_classes": 3}, patches={"size": [64, 64], "min_defect_fraction": 0.01})
    validate(cfg, tmp_path / "m.json")
    info = patches.run(cfg, tmp_path / "m" / "manifest_train.json", tmp_path / "p", _test_part(tmp_path / "m"))
    train = info["counts"]["train"]
    assert train["MT_Free"] > 0 and train.get("MT_Crack", 0) + train.get("MT_Blowhole", 0) > 0
    assert sum(train.values()) == info["n_patches"]["train"]


def test_class_mask_label():
    m = np.zeros((10, 10), np.uint8)
    m[:2, :3] = 2   # 6 %
    m[5:, 5:] = 1   # 25 %
    assert patches.class_mask_label(m, 3, 0.05) == (1, 0.25)
    assert patches.class_mask_label(m, 3, 0.5) == (0, 0.25)
    assert patches.class_mask_label(np.zeros((4, 4), np.uint8), 3, 0.0) == (0, 0.0)


def test_patch_dataset_from_x_y_class_id_masks(make_cfg, tmp_path):
    """The template's layout: train/x images + train/y integer defect masks (0 = free)."""
    rng = np.random.default_rng(2)
    for split, n in (("train", 4), ("test", 1)):
        for i in range(n):
            img = rng.integers(0, 255, (40, 40), dtype=np.uint8)
            mask = np.zeros((40, 40), np.uint8)
            mask[:20, :20] = 1 + i % 2  # top-left patch: class 1 or 2
            write_image(tmp_path / split / "x" / f"im{i}.png", img)
            write_image(tmp_path / split / "y" / f"im{i}.png", mask)
    cfg = make_cfg("patch_classification", data={"train": str(tmp_path / "train"), "test": str(tmp_path / "test"),
                                                 "val_split": 0.25},
                   model={"n_classes": 3}, patches={"size": [20, 20]})
    m = validate(cfg, tmp_path / "m.json")
    assert m["patch_layout"] == "masks" and m["classes"] == ["0", "1", "2"]
    info = patches.run(cfg, tmp_path / "m" / "manifest_train.json", tmp_path / "p", _test_part(tmp_path / "m"))
    total = Counter()
    for c in info["counts"].values():
        total.update(c)
    assert total == {"0": 5 * 3, "1": 3, "2": 2}
    # a mask value outside n_classes is reported, naming the file
    write_image(tmp_path / "train" / "y" / "im0.png", np.full((40, 40), 7, np.uint8))
    with pytest.raises(Exception, match="im0.png"):
        validate(cfg, tmp_path / "m2.json")
