"""csv_to_folders: CSV and MedMNIST .npz -> class folders; counts, idempotency, errors."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bioflow.errors import BioflowError
from bioflow.io import read_image
from bioflow.prepare.csv_to_folders import run


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_csv_counts_tree_and_rerun(make_cfg, demo_data, tmp_path, caplog):
    csv = demo_data / "pneumoniamnist" / "labels.csv"
    table = pd.read_csv(csv)
    cfg = make_cfg(data={"csv": str(csv)})
    before = _tree(demo_data / "pneumoniamnist")
    out = tmp_path / "folders"
    with caplog.at_level(logging.INFO):
        counts = run(cfg, out)
    expected = {s: dict(g.groupby("label").size()) for s, g in table.groupby("split")}
    assert counts == {s: {k: int(v) for k, v in d.items()} for s, d in expected.items()}
    assert counts["train"] == {"normal": 90, "pneumonia": 90}
    assert "normal=90" in caplog.text
    for _, row in table.iterrows():
        dst = out / row["split"] / row["label"] / Path(row["file"]).name
        assert dst.read_bytes() == (csv.parent / row["file"]).read_bytes()
    first = _tree(out)
    assert len(first) == len(table)
    assert run(cfg, out) == counts
    assert _tree(out) == first  # idempotent
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    assert _tree(demo_data / "pneumoniamnist") == before  # copied, never moved


def test_csv_without_split_column_and_index_labels(make_cfg, demo_data, tmp_path):
    src = demo_data / "pneumoniamnist"
    table = pd.read_csv(src / "labels.csv").iloc[:12]
    table = pd.DataFrame({"path": table["file"], "y": (table["label"] == "pneumonia").astype(int)})
    csv = tmp_path / "nosplit.csv"
    table.to_csv(csv, index=False)
    cfg = make_cfg(data={"csv": str(csv), "csv_options": {
        "file_column": "path", "label_column": "y", "image_root": str(src), "class_names": ["healthy", "sick"]}})
    counts = run(cfg, tmp_path / "out")
    assert list(counts) == ["train"]
    assert sum(counts["train"].values()) == 12
    assert set(counts["train"]) <= {"healthy", "sick"}
    assert not (tmp_path / "out" / "val").exists() and not (tmp_path / "out" / "test").exists()


def test_csv_problems_all_reported_naming_files(make_cfg, demo_data, tmp_path):
    src = demo_data / "pneumoniamnist"
    csv = tmp_path / "bad.csv"
    csv.write_text("file,label,split\nimages/missing_1.png,normal,train\n"
                   "images/missing_2.png,normal,train\nimages/train_3494.png,normal,holdout\n")
    cfg = make_cfg(data={"csv": str(csv), "csv_options": {"image_root": str(src)}})
    with pytest.raises(BioflowError) as exc:
        run(cfg, tmp_path / "out")
    msg = str(exc.value)
    assert "missing_1.png" in msg and "missing_2.png" in msg and "holdout" in msg
    assert not (tmp_path / "out").exists()
    cfg = make_cfg(data={"csv": str(src / "labels.csv"), "csv_options": {"label_column": "diagnosis"}})
    with pytest.raises(BioflowError, match="data.csv_options.label_column"):
        run(cfg, tmp_path / "out")


def test_npz_2d_and_3d_written_as_png_and_tif(make_cfg, tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "mini.npz"
    np.savez(npz, train_images=rng.integers(0, 255, (7, 28, 28), dtype=np.uint8),
             train_labels=np.array([[0], [1], [1], [2], [0], [1], [2]]),
             test_images=rng.integers(0, 255, (3, 28, 28), dtype=np.uint8),
             test_labels=np.array([[0], [1], [2]]))
    counts = run(make_cfg(data={"csv": str(npz)}), tmp_path / "f2")
    assert counts == {"train": {"0": 2, "1": 3, "2": 2}, "test": {"0": 1, "1": 1, "2": 1}}
    with np.load(npz) as z:
        np.testing.assert_array_equal(read_image(tmp_path / "f2" / "train" / "1" / "train_1.png")[..., 0],
                                      z["train_images"][1])
    vol = tmp_path / "vol.npz"
    np.savez(vol, train_images=rng.integers(0, 255, (4, 8, 16, 16), dtype=np.uint8),
             train_labels=np.array([0, 1, 0, 1]))
    cfg = make_cfg(experiment={"ndim": 3}, data={"csv": str(vol), "patch_size": [8, 16, 16],
                                                  "csv_options": {"class_names": ["a", "b"]}})
    assert run(cfg, tmp_path / "f3") == {"train": {"a": 2, "b": 2}}
    files = sorted((tmp_path / "f3" / "train" / "b").iterdir())
    assert [f.suffix for f in files] == [".tif", ".tif"]
    assert read_image(files[0], ndim=3).shape == (8, 16, 16, 1)


def test_real_pneumoniamnist_npz_counts(make_cfg, shared_data, tmp_path):
    npz = shared_data / "pneumoniamnist" / "pneumoniamnist.npz"
    if not npz.is_file():
        pytest.skip(f"{npz} absent")
    cfg = make_cfg(data={"csv": str(npz), "csv_options": {"class_names": ["normal", "pneumonia"]}})
    counts = run(cfg, tmp_path / "pm")
    with np.load(npz) as z:
        for split in ("train", "val", "test"):
            labels = z[f"{split}_labels"].ravel()
            assert counts[split] == {"normal": int((labels == 0).sum()), "pneumonia": int((labels == 1).sum())}
    # documented sizes of this re-upload (MANIFEST.md)
    assert sum(counts["train"].values()) == 3882 and counts["test"] == {"normal": 234, "pneumonia": 390}
    assert len(os.listdir(tmp_path / "pm" / "val" / "normal")) == counts["val"]["normal"]
