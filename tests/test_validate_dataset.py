"""validate_dataset: bad inputs built from real demo files, each error naming the file;
all problems in one error; inputs never modified; manifest content and the val split."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from helpers_stages import validate_run as run
from bioflow.errors import BioflowError
from bioflow.io import read_image, write_image

# --- mutations: each breaks a copied real data tree and returns (overrides, expected names) ---


def _first(folder: Path) -> Path:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".txt")[0]


def _last(folder: Path) -> Path:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".txt")[-1]


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def cls_truncated_png(root, tmp):
    p = _first(root / "train" / "normal")
    _truncate(p)
    return {}, [p]


def cls_text_file(root, tmp):
    p = root / "train" / "normal" / "notes.txt"
    p.write_text("not an image")
    return {}, [p]


def cls_wrong_channels(root, tmp):
    # grey + a second channel: not a colour image, so not converted to grey
    src = _first(root / "train" / "pneumonia")
    two = np.concatenate([read_image(src)] * 2, axis=-1)
    p = src.with_suffix(".tif")
    src.unlink()
    write_image(p, two)
    return {}, [p, "data.channels"]


def cls_3d_file_in_2d_config(root, tmp):
    src = _first(Path(__file__).resolve().parents[1] / "demo_data" / "nuclei3d" / "train" / "x")
    p = root / "train" / "normal" / "volume.tif"
    shutil.copy(src, p)
    return {}, [p]


def cls_class_count(root, tmp):
    return {"model": {"n_classes": 3}}, [root / "train", "model.n_classes"]


def cls_empty_class_folder(root, tmp):
    p = root / "train" / "effusion"
    p.mkdir()
    return {"model": {"n_classes": 3}}, [p, "empty class folder"]


def cls_unseen_test_class(root, tmp):
    p = root / "test" / "covid"
    p.mkdir()
    shutil.copy(_first(root / "test" / "normal"), p / "x.png")
    return {}, [p, "not among the train classes"]


def cls_nan_image(root, tmp):
    img = read_image(_last(root / "train" / "normal")).astype(np.float32)
    img[3, 4, 0] = np.nan
    p = root / "train" / "normal" / "nan.tif"
    write_image(p, img)
    return {}, [p, "NaN"]


def cls_missing_path(root, tmp):
    p = tmp / "no_such_test_folder"
    return {"data": {"test": str(p)}}, [p, "data.test"]


def cls_image_in_nested_folder_of_unseen_val_class(root, tmp):
    p = root / "val" / "other" / "deep"
    p.mkdir(parents=True)
    shutil.copy(_first(root / "train" / "normal"), p / "a.png")
    shutil.copytree(root / "test" / "normal", root / "val" / "normal")
    return {"data": {"val": str(root / "val")}}, [root / "val" / "other", "val set"]


def seg_truncated_tiff(root, tmp):
    p = _first(root / "train" / "x")
    _truncate(p)
    return {}, [p]


def seg_image_without_mask(root, tmp):
    x = _first(root / "train" / "x")
    (root / "train" / "y" / x.name).unlink()
    return {}, [x, "without a mask"]


def seg_mask_without_image(root, tmp):
    y = _first(root / "train" / "y")
    (root / "train" / "x" / y.name).unlink()
    return {}, [y, "without an image"]


def seg_mismatched_pair_names(root, tmp):
    x = _first(root / "train" / "x")
    y = root / "train" / "y" / x.name
    renamed = y.with_name("zz_renamed.tif")
    y.rename(renamed)
    return {}, [x, renamed, "names differ"]


def seg_mask_shape_mismatch(root, tmp):
    y = _first(root / "train" / "y")
    tifffile.imwrite(y, tifffile.imread(y)[:200, :230])
    return {}, [y, "mask shape"]


def seg_float_mask(root, tmp):
    y = _first(root / "train" / "y")
    tifffile.imwrite(y, (tifffile.imread(y) > 0).astype(np.float32))
    return {}, [y, "not integer"]


def seg_mask_value_too_large(root, tmp):
    # instance masks read as class ids: values >= n_classes
    y = _first(root / "train" / "y")
    return {"data": {"mask_transform": "none"}}, [y, "model.n_classes"]


def seg_test_masks_missing(root, tmp):
    shutil.rmtree(root / "test" / "y")
    return {}, [root / "test" / "y", "test_has_labels"]


def seg_rgb_mask(root, tmp):
    y = _first(root / "train" / "y")
    m = tifffile.imread(y).astype(np.uint8)
    tifffile.imwrite(y, np.stack([m, m, m], -1), photometric="rgb")
    return {}, [y]


def seg3d_mask_shape_mismatch(root, tmp):
    y = _first(root / "train" / "y")
    tifffile.imwrite(y, tifffile.imread(y)[:20])
    return {}, [y, "mask shape"]


def seg3d_2d_image_in_3d_config(root, tmp):
    x = _first(root / "train" / "x")
    tifffile.imwrite(x, tifffile.imread(x)[0])
    return {}, [x]


def cls_multilabel_missing_row(root, tmp):
    files = sorted(root.rglob("*.png"))
    missing = files[2]
    rows = [{"file": f.name, "a": 1, "b": 0, "c": 1} for f in files if f != missing]
    pd.DataFrame(rows).to_csv(tmp / "labels.csv", index=False)
    return {"model": {"multilabel": True, "n_classes": 3},
            "data": {"labels_csv": str(tmp / "labels.csv")}}, [missing, "labels.csv"]


def cls_metadata_not_numeric(root, tmp):
    files = sorted(root.rglob("*.png"))
    rows = [{"file": f.name, "age": 40, "sex": 1} for f in files]
    rows[5]["age"] = "forty"
    pd.DataFrame(rows).to_csv(tmp / "meta.csv", index=False)
    return {"data": {"metadata_csv": str(tmp / "meta.csv")}}, [files[5], "age"]


CLS_CASES = [cls_truncated_png, cls_text_file, cls_wrong_channels, cls_3d_file_in_2d_config,
             cls_class_count, cls_empty_class_folder, cls_unseen_test_class, cls_nan_image,
             cls_missing_path, cls_image_in_nested_folder_of_unseen_val_class, cls_multilabel_missing_row,
             cls_metadata_not_numeric]
SEG_CASES = [seg_truncated_tiff, seg_image_without_mask, seg_mask_without_image,
             seg_mismatched_pair_names, seg_mask_shape_mismatch, seg_float_mask,
             seg_mask_value_too_large, seg_test_masks_missing, seg_rgb_mask]
SEG3D_CASES = [seg3d_mask_shape_mismatch, seg3d_2d_image_in_3d_config]


def _cls_cfg(make_cfg, root, **over):
    base = {"data": {"train": str(root / "train"), "test": str(root / "test")}}
    from bioflow.config import deep_update
    return make_cfg("classification", **deep_update(base, over))


def _seg_cfg(make_cfg, root, ndim=2, **over):
    from bioflow.config import deep_update
    base = {"data": {"train": str(root / "train"), "test": str(root / "test"),
                     "mask_transform": "foreground",
                     "patch_size": [16, 64, 64] if ndim == 3 else [128, 128]},
            "experiment": {"ndim": ndim},
            "inference": {"padding": 4}}  # config check: below half of the 16-slice patch
    return make_cfg("semantic_segmentation", **deep_update(base, over))


def _assert_named(exc, expected):
    msg = str(exc.value)
    assert msg.startswith("validate_dataset:")
    for item in expected:
        assert str(item) in msg, f"{item} not in error: {msg}"


@pytest.mark.parametrize("case", CLS_CASES, ids=lambda f: f.__name__)
def test_classification_bad_input_named(case, pneumonia_folders, make_cfg, tmp_path):
    over, expected = case(pneumonia_folders, tmp_path)
    cfg = _cls_cfg(make_cfg, pneumonia_folders, **over)
    with pytest.raises(BioflowError) as exc:
        run(cfg, tmp_path / "manifest.json")
    _assert_named(exc, expected)
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.parametrize("case", SEG_CASES, ids=lambda f: f.__name__)
def test_segmentation_bad_input_named(case, dsb_folders, make_cfg, tmp_path):
    over, expected = case(dsb_folders, tmp_path)
    with pytest.raises(BioflowError) as exc:
        run(_seg_cfg(make_cfg, dsb_folders, **over), tmp_path / "manifest.json")
    _assert_named(exc, expected)


@pytest.mark.parametrize("case", SEG3D_CASES, ids=lambda f: f.__name__)
def test_segmentation_3d_bad_input_named(case, nuclei3d_folders, make_cfg, tmp_path):
    over, expected = case(nuclei3d_folders, tmp_path)
    with pytest.raises(BioflowError) as exc:
        run(_seg_cfg(make_cfg, nuclei3d_folders, ndim=3, **over), tmp_path / "manifest.json")
    _assert_named(exc, expected)


def test_all_problems_in_one_error(pneumonia_folders, dsb_folders, make_cfg, tmp_path):
    expected = []
    for case in (cls_truncated_png, cls_text_file, cls_wrong_channels, cls_unseen_test_class,
                 cls_nan_image, cls_3d_file_in_2d_config):
        expected += case(pneumonia_folders, tmp_path)[1]
    with pytest.raises(BioflowError) as exc:
        run(_cls_cfg(make_cfg, pneumonia_folders), tmp_path / "m.json")
    _assert_named(exc, expected)
    assert str(exc.value).startswith("validate_dataset: 6 problem(s)")
    assert len(exc.value.problems) == 6

    expected = []
    for case in (seg_image_without_mask, seg_mask_shape_mismatch, seg_float_mask):
        expected += case(dsb_folders, tmp_path)[1]
    with pytest.raises(BioflowError) as exc:
        run(_seg_cfg(make_cfg, dsb_folders), tmp_path / "m.json")
    _assert_named(exc, expected)
    assert len(exc.value.problems) == 3


def _snapshot(root: Path) -> dict:
    """Every file's content hash and mtime, and every folder (nothing added or removed)."""
    return {p.relative_to(root).as_posix(): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def test_inputs_unchanged(pneumonia_folders, dsb_folders, make_cfg, tmp_path):
    cls_nan_image(pneumonia_folders, tmp_path)
    seg_float_mask(dsb_folders, tmp_path)
    snaps = {r: _snapshot(r) for r in (pneumonia_folders, dsb_folders)}
    with pytest.raises(BioflowError):
        run(_cls_cfg(make_cfg, pneumonia_folders), tmp_path / "a.json")
    with pytest.raises(BioflowError):
        run(_seg_cfg(make_cfg, dsb_folders), tmp_path / "b.json")
    (pneumonia_folders / "train" / "normal" / "nan.tif").unlink()
    snaps[pneumonia_folders] = _snapshot(pneumonia_folders)
    run(_cls_cfg(make_cfg, pneumonia_folders), tmp_path / "c.json")
    for root, snap in snaps.items():
        assert _snapshot(root) == snap


# --- good data: the manifest ------------------------------------------------------------

def test_classification_manifest_and_seeded_stratified_split(pneumonia_folders, make_cfg, tmp_path):
    cfg = _cls_cfg(make_cfg, pneumonia_folders, data={"val_split": 0.25})
    m = run(cfg, tmp_path / "m.json")
    # two manifests: what training reads (train + val) and what prediction reads (test)
    train = json.loads((tmp_path / "m" / "manifest_train.json").read_text())
    test = json.loads((tmp_path / "m" / "manifest_test.json").read_text())
    assert set(train["splits"]) == {"train", "val"} and set(test["splits"]) == {"test"}
    assert train["splits"]["val"] == m["splits"]["val"] and test["splits"]["test"] == m["splits"]["test"]
    assert test["classes"] == train["classes"]
    assert m["workflow"] == "classification" and m["ndim"] == 2 and m["channels"] == 1
    assert m["classes"] == ["normal", "pneumonia"] and m["val_source"] == "split"
    tr, va, te = (m["splits"][s] for s in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (12, 4, 6)
    assert sorted(e["class_name"] for e in va) == ["normal", "normal", "pneumonia", "pneumonia"]
    assert not {e["path"] for e in tr} & {e["path"] for e in va}
    all_train = {str(p) for p in (pneumonia_folders / "train").rglob("*.png")}
    assert {e["path"] for e in tr + va} == all_train
    e = tr[0]
    assert Path(e["path"]).is_absolute() and e["shape"] == [28, 28, 1] and e["dtype"] == "uint8"
    assert e["label"] == m["classes"].index(e["class_name"])
    assert m["counts"]["test"] == {"images": 6, "normal": 3, "pneumonia": 3}
    # same seed -> same split (every run_id shares it); another seed -> another split
    assert run(cfg, tmp_path / "m2.json")["splits"]["val"] == va
    other = _cls_cfg(make_cfg, pneumonia_folders, data={"val_split": 0.25}, experiment={"split_seed": 7})
    assert run(other, tmp_path / "m3.json")["splits"]["val"] != va


def test_files_outside_class_folders_are_ignored_and_listed(pneumonia_folders, make_cfg, tmp_path, caplog):
    loose = pneumonia_folders / "train" / "README.md"
    loose.write_text("about this data")
    shutil.copy(_first(pneumonia_folders / "train" / "normal"), pneumonia_folders / "train" / "overview.png")
    m = run(_cls_cfg(make_cfg, pneumonia_folders), tmp_path / "m.json")
    assert m["ignored_files"] == [str(loose.parent / "README.md"), str(loose.parent / "overview.png")]
    assert "overview.png" in caplog.text
    assert len(m["splits"]["train"]) + len(m["splits"]["val"]) == 16


def test_colour_image_read_as_grey_with_one_channel(pneumonia_folders, make_cfg, tmp_path):
    p = _first(pneumonia_folders / "train" / "pneumonia")
    grey = read_image(p)
    p.unlink()
    write_image(p, np.repeat(grey, 3, axis=-1))  # an RGB PNG holding the grey image
    m = run(_cls_cfg(make_cfg, pneumonia_folders), tmp_path / "m.json")
    e = next(e for s in ("train", "val") for e in m["splits"][s] if e["path"] == str(p))
    assert e["shape"] == [28, 28, 1]
    np.testing.assert_array_equal(read_image(p, channels=1), grey)


def test_given_val_folder_and_unlabelled_test(pneumonia_folders, make_cfg, tmp_path):
    val = pneumonia_folders / "val"
    shutil.copytree(pneumonia_folders / "test", val)
    flat = tmp_path / "unlabelled"
    (flat / "sub").mkdir(parents=True)
    for i, p in enumerate(sorted((pneumonia_folders / "test").rglob("*.png"))):
        shutil.copy(p, (flat if i % 2 else flat / "sub") / p.name)
    cfg = _cls_cfg(make_cfg, pneumonia_folders,
                   data={"val": str(val), "test": str(flat), "test_has_labels": False})
    m = run(cfg, tmp_path / "m.json")
    assert m["val_source"] == "path" and len(m["splits"]["val"]) == 6
    assert len(m["splits"]["train"]) == 16
    assert len(m["splits"]["test"]) == 6
    assert all(e["label"] is None and e["class_name"] is None for e in m["splits"]["test"])


def test_csv_mode_missing_val_means_split_and_missing_test_means_none(make_cfg, demo_data, tmp_path):
    from bioflow.layout import Layout
    from bioflow.prepare.csv_to_folders import run as csv_to_folders
    table = pd.read_csv(demo_data / "pneumoniamnist" / "labels.csv")
    table = table[table["split"] == "train"].drop(columns="split")
    table.to_csv(tmp_path / "train_only.csv", index=False)
    cfg = make_cfg(data={"csv": str(tmp_path / "train_only.csv"),
                         "csv_options": {"image_root": str(demo_data / "pneumoniamnist")}})
    csv_to_folders(cfg, Layout.of(cfg).folders)
    m = run(cfg, tmp_path / "m.json")
    assert m["val_source"] == "split"
    assert len(m["splits"]["val"]) == 18 and len(m["splits"]["train"]) == 162
    assert m["splits"]["test"] == [] and m["data_paths"]["test"] is None


def test_segmentation_manifest_2d_and_3d(dsb_folders, nuclei3d_folders, make_cfg, tmp_path):
    m = run(_seg_cfg(make_cfg, dsb_folders), tmp_path / "m.json")
    assert m["classes"] == ["0", "1"] and m["mask_transform"] == "foreground"
    n = len(list((dsb_folders / "train" / "x").iterdir()))
    assert len(m["splits"]["train"]) + len(m["splits"]["val"]) == n
    for e in m["splits"]["train"] + m["splits"]["test"]:
        assert Path(e["mask"]).name == Path(e["path"]).name and "/y/" in e["mask"]
        assert e["mask_shape"] == e["shape"][:-1]
    m3 = run(_seg_cfg(make_cfg, nuclei3d_folders, ndim=3), tmp_path / "m3.json")
    assert m3["ndim"] == 3 and m3["splits"]["test"][0]["shape"] == [32, 128, 128, 1]
    # instance masks with n_classes 3 and boundary_interior are valid
    run(_seg_cfg(make_cfg, dsb_folders, data={"mask_transform": "boundary_interior"},
                 model={"n_classes": 3}), tmp_path / "m4.json")
    with pytest.raises(BioflowError, match="model.n_classes"):
        run(_seg_cfg(make_cfg, dsb_folders, data={"mask_transform": "boundary_interior"}), tmp_path / "m5.json")


def test_unlabelled_segmentation_test_without_y(dsb_folders, make_cfg, tmp_path):
    shutil.rmtree(dsb_folders / "test" / "y")
    m = run(_seg_cfg(make_cfg, dsb_folders, data={"test_has_labels": False}), tmp_path / "m.json")
    assert len(m["splits"]["test"]) == 4 and all(e["mask"] is None for e in m["splits"]["test"])


def test_multilabel_and_metadata_rows_attached(pneumonia_folders, make_cfg, tmp_path):
    files = sorted(pneumonia_folders.rglob("*.png"))
    rng = np.random.default_rng(0)
    labels = pd.DataFrame({"file": [f.name for f in files], "a": rng.integers(0, 2, len(files)),
                           "b": rng.integers(0, 2, len(files))})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    meta = pd.DataFrame({"file": [f.relative_to(pneumonia_folders).as_posix() for f in files],
                         "age": np.arange(len(files)) + 20.5})
    meta.to_csv(tmp_path / "meta.csv", index=False)
    cfg = _cls_cfg(make_cfg, pneumonia_folders, model={"multilabel": True, "n_classes": 2},
                   data={"labels_csv": str(tmp_path / "labels.csv"), "metadata_csv": str(tmp_path / "meta.csv")})
    m = run(cfg, tmp_path / "m.json")
    assert m["classes"] == ["a", "b"] and m["metadata_columns"] == ["age"]
    by_name = labels.set_index("file")
    for e in m["splits"]["train"] + m["splits"]["val"] + m["splits"]["test"]:
        name = Path(e["path"]).name
        assert e["label"] == [int(by_name.loc[name, "a"]), int(by_name.loc[name, "b"])]
        rel = Path(e["path"]).relative_to(pneumonia_folders).as_posix()
        assert e["metadata"] == [float(meta.set_index("file").loc[rel, "age"])]


# --- mask transforms and manifest readers ------------------------------------------------

def test_apply_mask_transform_2d_and_3d():
    from bioflow.data.masks import apply_mask_transform
    m = np.zeros((7, 9), np.uint16)
    m[1:6, 1:4] = 5
    m[1:6, 4:8] = 9  # touching instance
    np.testing.assert_array_equal(apply_mask_transform(m, "none"), m)
    fg = apply_mask_transform(m, "foreground")
    assert fg.dtype == np.uint8 and set(np.unique(fg)) == {0, 1} and fg.sum() == (m > 0).sum()
    bi = apply_mask_transform(m, "boundary_interior")
    assert set(np.unique(bi)) == {0, 1, 2}
    assert (bi[m == 0] == 0).all()
    assert bi[3, 2] == 2 and bi[3, 1] == 1
    assert bi[3, 3] == 1 and bi[3, 4] == 1  # both sides of the contact are boundary
    vol = np.zeros((5, 6, 6), np.uint8)
    vol[1:4, 1:5, 1:5] = 1
    bv = apply_mask_transform(vol, "boundary_interior")
    assert bv[2, 2, 2] == 2 and bv[1, 2, 2] == 1 and (bv[vol == 0] == 0).all()
    assert m.max() == 9  # input untouched
    with pytest.raises(BioflowError, match="data.mask_transform"):
        apply_mask_transform(m, "edges")


def test_manifest_readers(dsb_folders, make_cfg, tmp_path):
    from bioflow.data.manifest import load_manifest, read_entry_image, read_entry_mask
    run(_seg_cfg(make_cfg, dsb_folders), tmp_path / "m.json")
    m = load_manifest(tmp_path / "m" / "manifest_train.json")
    e = m["splits"]["train"][0]
    img, mask = read_entry_image(m, e), read_entry_mask(m, e)
    assert img.shape == tuple(e["shape"]) and mask.shape == img.shape[:-1]
    assert set(np.unique(mask)) <= {0, 1}
    assert read_entry_mask(m, e, transform=False).max() > 1
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(BioflowError, match="bad.json"):
        load_manifest(tmp_path / "bad.json")
