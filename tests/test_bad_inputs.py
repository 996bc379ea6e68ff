"""A corpus of bad inputs across the three workflows, each built from real demo files.

Every case must fail before any training (validation, csv_to_folders or the config check, run
in-process as the stages do) with ONE line naming the offending file or key and saying what to
do; the inputs are checksummed before and after (never modified) and nothing may appear
outside ``result_dir``. tests/test_validate_dataset.py holds the manifest checks on good data;
the one Snakemake run on a dataset with several problems is at the end (end-to-end marker).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from bioflow import workflows
from bioflow.config import deep_update
from bioflow.errors import BioflowError
from bioflow.io import read_image, write_image

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo_data"
ARCH = {"classification": "simple_cnn", "semantic_segmentation": "unet_nd", "patch_classification": "resnet18"}


# --- the data each case starts from: small copies of the demo files ------------------------

def _pneumonia(root: Path) -> Path:
    """{train,test}/{normal,pneumonia}/*.png: 6 train + 2 test PNGs per class."""
    table = pd.read_csv(DEMO / "pneumoniamnist" / "labels.csv")
    for split, n in (("train", 6), ("test", 2)):
        for label, rows in table[table["split"] == split].groupby("label"):
            (root / split / label).mkdir(parents=True)
            for f in rows["file"].iloc[:n]:
                shutil.copy2(DEMO / "pneumoniamnist" / f, root / split / label)
    return root


def _pairs(src: Path, root: Path, n_train: int = 5, n_test: int = 2) -> Path:
    """{train,test}/{x,y}/ with the first files of a demo segmentation set."""
    for split, n in (("train", n_train), ("test", n_test)):
        for xy in ("x", "y"):
            (root / split / xy).mkdir(parents=True)
            for f in sorted((src / split / xy).iterdir())[:n]:
                shutil.copy2(f, root / split / xy)
    return root


BUILD = {"cls": _pneumonia, "seg": lambda r: _pairs(DEMO / "dsb2018", r),
         "seg3d": lambda r: _pairs(DEMO / "nuclei3d", r, 3, 1), "patch": lambda r: _pairs(DEMO / "dsb2018", r)}


def _cfg(kind: str, root: Path, result_dir: Path, over: dict) -> dict:
    """The raw (unvalidated) config of a case on ``root``."""
    wf = {"cls": "classification", "seg": "semantic_segmentation", "seg3d": "semantic_segmentation",
          "patch": "patch_classification"}.get(kind, "classification")
    base = {"experiment": {"name": "bad", "workflow": wf, "result_dir": str(result_dir)},
            "data": {"train": str(root / "train"), "test": str(root / "test")},
            "model": {"architecture": ARCH[wf]}}
    if kind in ("seg", "seg3d", "patch"):
        base["data"]["mask_transform"] = "foreground"
    if kind == "seg":
        base = deep_update(base, {"data": {"patch_size": [128, 128]}, "inference": {"padding": 4}})
    if kind == "seg3d":
        base = deep_update(base, {"experiment": {"ndim": 3}, "data": {"patch_size": [16, 64, 64]},
                                  "inference": {"padding": 4}})
    return deep_update(base, over)


def _first(folder: Path) -> Path:
    return sorted(p for p in folder.iterdir() if p.is_file())[0]


def _last(folder: Path) -> Path:
    return sorted(p for p in folder.iterdir() if p.is_file())[-1]


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


# --- the corpus: case(root, tmp) -> (config overrides, strings the message must hold) --------
# Each list holds the cases of one starting dataset (BUILD); paths in the expected strings are
# the offending files.

def cls_zero_byte(root, tmp):
    p = _first(root / "train" / "pneumonia")
    p.write_bytes(b"")
    return {}, [p, "replace or remove"]


def cls_truncated(root, tmp):
    p = _last(root / "train" / "pneumonia")
    _truncate(p)
    return {}, [p, "truncated"]


def cls_text_named_png(root, tmp):
    p = root / "train" / "normal" / "fake.png"
    p.write_text("this is not a PNG")
    return {}, [p, "replace or remove"]


def cls_non_image_extension(root, tmp):
    p = root / "test" / "normal" / "notes.docx"
    p.write_bytes(b"PK\x03\x04")
    return {}, [p, "not an image file"]


def cls_volume_in_2d(root, tmp):
    p = root / "train" / "normal" / "volume.tif"
    shutil.copy(_first(DEMO / "nuclei3d" / "train" / "x"), p)
    return {}, [p, "experiment.ndim"]


def cls_two_channels(root, tmp):
    src = _first(root / "train" / "pneumonia")
    p = src.with_suffix(".tif")
    write_image(p, np.concatenate([read_image(src)] * 2, axis=-1))
    src.unlink()
    return {}, [p, "data.channels"]


def cls_nan(root, tmp):
    p = root / "train" / "normal" / "nan.tif"
    img = read_image(_first(root / "train" / "normal")).astype(np.float32)
    img[1, 2] = np.nan
    write_image(p, img)
    return {}, [p, "NaN"]


def cls_inf(root, tmp):
    p = root / "test" / "pneumonia" / "inf.tif"
    img = read_image(_first(root / "test" / "pneumonia")).astype(np.float64)
    img[0, 0] = -np.inf
    write_image(p, img)
    return {}, [p, "Inf"]


def cls_empty_class_folder(root, tmp):
    p = root / "train" / "effusion"
    p.mkdir()
    return {"model": {"n_classes": 3}}, [p, "empty class folder"]


def cls_extra_class_folder(root, tmp):
    (root / "train" / "covid").mkdir()
    shutil.copy(_first(root / "train" / "normal"), root / "train" / "covid")
    return {}, [root / "train", "model.n_classes: 3"]


def cls_unseen_test_class(root, tmp):
    p = root / "test" / "covid"
    p.mkdir()
    shutil.copy(_first(root / "test" / "normal"), p)
    return {}, [p, "not among the train classes"]


def cls_empty_test_folder(root, tmp):
    for d in (root / "test").iterdir():
        shutil.rmtree(d)
    return {}, [root / "test", "no class folders"]


def cls_missing_test_path(root, tmp):
    return {"data": {"test": str(tmp / "no_such_folder")}}, [tmp / "no_such_folder", "data.test"]


def cls_missing_train_path(root, tmp):
    shutil.rmtree(root / "train")
    return {}, [root / "train", "data.train"]


def cls_symlink_loop(root, tmp):
    p = root / "train" / "normal" / "again"
    os.symlink(p.parent, p)
    return {}, [p, "symbolic link"]


def cls_broken_symlink(root, tmp):
    p = root / "train" / "normal" / "gone.png"
    os.symlink(tmp / "nowhere.png", p)
    return {}, [p, "broken"]


def cls_names_differ_in_case(root, tmp):
    src = _last(root / "train" / "normal")
    twin = src.with_name(src.stem.upper() + src.suffix)
    shutil.copy(src, twin)
    return {}, [twin, "only in case"]


def cls_class_folders_differ_in_case(root, tmp):
    shutil.copytree(root / "train" / "normal", root / "train" / "Normal")
    return {"model": {"n_classes": 3}}, [root / "train" / "Normal", "only in case"]


def cls_colour_strict(root, tmp):
    src = _first(root / "train" / "pneumonia")
    write_image(src, np.repeat(read_image(src), 3, axis=-1))  # an RGB PNG of the grey image
    return {"data": {"strict": True}}, [src, "grey", "data.strict"]


def cls_grey_in_rgb_config(root, tmp):
    return {"data": {"channels": 3}}, [_first(root / "train" / "normal"), "data.channels is 3"]


def cls_loose_file_strict(root, tmp):
    p = root / "train" / "overview.png"
    shutil.copy(_first(root / "train" / "normal"), p)
    return {"data": {"strict": True}}, [p, "outside the class folders"]


def cls_labels_csv_missing_row(root, tmp):
    files = sorted(root.rglob("*.png"))
    pd.DataFrame([{"file": f.name, "a": 1, "b": 0} for f in files[1:]]).to_csv(tmp / "labels.csv", index=False)
    return ({"model": {"multilabel": True}, "data": {"labels_csv": str(tmp / "labels.csv")}},
            [files[0], "no row in"])


def cls_labels_csv_unknown_label(root, tmp):
    files = sorted(root.rglob("*.png"))
    rows = [{"file": f.name, "a": 1, "b": 0} for f in files]
    rows[3]["b"] = "maybe"
    pd.DataFrame(rows).to_csv(tmp / "labels.csv", index=False)
    return ({"model": {"multilabel": True}, "data": {"labels_csv": str(tmp / "labels.csv")}},
            [files[3], "not all 0/1"])


def cls_metadata_not_numeric(root, tmp):
    files = sorted(root.rglob("*.png"))
    rows = [{"file": f.name, "age": 40} for f in files]
    rows[2]["age"] = "forty"
    pd.DataFrame(rows).to_csv(tmp / "meta.csv", index=False)
    return {"data": {"metadata_csv": str(tmp / "meta.csv")}}, [files[2], "give numbers"]


def cls_unknown_architecture(root, tmp):
    # the model check is listed with the data problems: the truncated file is named too
    p = _first(root / "train" / "normal")
    _truncate(p)
    return {"model": {"architecture": "resnet_9000"}}, ["model.architecture", "resnet_9000", p]


CLS = [cls_zero_byte, cls_truncated, cls_text_named_png, cls_non_image_extension, cls_volume_in_2d,
       cls_two_channels, cls_nan, cls_inf, cls_empty_class_folder, cls_extra_class_folder,
       cls_unseen_test_class, cls_empty_test_folder, cls_missing_test_path, cls_missing_train_path,
       cls_symlink_loop, cls_broken_symlink, cls_names_differ_in_case, cls_class_folders_differ_in_case,
       cls_colour_strict, cls_grey_in_rgb_config, cls_loose_file_strict, cls_labels_csv_missing_row,
       cls_labels_csv_unknown_label, cls_metadata_not_numeric, cls_unknown_architecture]


def seg_truncated_tiff(root, tmp):
    p = _first(root / "train" / "x")
    _truncate(p)
    return {}, [p, "truncated"]


def seg_mask_missing(root, tmp):
    x = _first(root / "train" / "x")
    (root / "train" / "y" / x.name).unlink()
    return {}, [x, "without a mask"]


def seg_extra_mask(root, tmp):
    p = root / "train" / "y" / "orphan.tif"
    shutil.copy(_first(root / "train" / "y"), p)
    return {}, [p, "without an image"]


def seg_misshapen_mask(root, tmp):
    y = _first(root / "test" / "y")
    tifffile.imwrite(y, tifffile.imread(y)[:100])
    return {}, [y, "mask shape"]


def seg_float_mask(root, tmp):
    y = _first(root / "train" / "y")
    tifffile.imwrite(y, tifffile.imread(y).astype(np.float32) * 0.5)
    return {}, [y, "not integer"]


def seg_mask_out_of_range(root, tmp):
    return {"data": {"mask_transform": "none"}}, [_first(root / "train" / "y"), "model.n_classes"]


def seg_negative_mask(root, tmp):
    y = _first(root / "train" / "y")
    m = tifffile.imread(y).astype(np.int16)
    m[0, 0] = -1
    tifffile.imwrite(y, m)
    return {}, [y, "negative"]


def seg_test_masks_missing(root, tmp):
    shutil.rmtree(root / "test" / "y")
    return {}, [root / "test" / "y", "data.test_has_labels: false"]


def seg_two_files_one_name(root, tmp):
    x = _first(root / "train" / "x")
    p = x.with_suffix(".npy")
    np.save(p, read_image(x)[..., 0])
    return {}, [p, "keep one per name"]


def seg_mask_case_twin(root, tmp):
    y = _first(root / "train" / "y")
    twin = y.with_suffix(".TIF")
    shutil.copy(y, twin)
    return {}, [twin, "only in case"]


def seg_smaller_than_patch_strict(root, tmp):
    return ({"data": {"patch_size": [512, 512], "strict": True}},
            [_first(root / "train" / "x"), "smaller than the patch size [512, 512]", "data.strict"])


def seg_empty_x(root, tmp):
    for f in (root / "train" / "x").iterdir():
        f.unlink()
    return {}, [root / "train" / "x", "no images"]


def seg_volume_in_2d(root, tmp):
    x = _first(root / "train" / "x")
    shutil.copy(_first(DEMO / "nuclei3d" / "train" / "x"), x)
    return {}, [x, "experiment.ndim"]


SEG = [seg_truncated_tiff, seg_mask_missing, seg_extra_mask, seg_misshapen_mask, seg_float_mask,
       seg_mask_out_of_range, seg_negative_mask, seg_test_masks_missing, seg_two_files_one_name,
       seg_mask_case_twin, seg_smaller_than_patch_strict, seg_empty_x, seg_volume_in_2d]


def seg3d_misshapen_mask(root, tmp):
    y = _first(root / "train" / "y")
    tifffile.imwrite(y, tifffile.imread(y)[:20])
    return {}, [y, "mask shape"]


def seg3d_plane_in_3d(root, tmp):
    x = _first(root / "train" / "x")
    tifffile.imwrite(x, tifffile.imread(x)[0])
    return {}, [x, "experiment.ndim"]


def seg3d_png_in_3d(root, tmp):
    x = _first(root / "test" / "x")
    p = x.with_suffix(".png")
    shutil.copy(_first(DEMO / "pneumoniamnist" / "images"), p)
    x.unlink()
    return {}, [p, "experiment.ndim"]


SEG3D = [seg3d_misshapen_mask, seg3d_plane_in_3d, seg3d_png_in_3d]


def patch_smaller_than_patch_strict(root, tmp):
    return ({"patches": {"patch_size": [300, 300]}, "data": {"strict": True}},
            [_first(root / "train" / "x"), "smaller than the patch size [300, 300]"])


def patch_mask_missing(root, tmp):
    x = _first(root / "test" / "x")
    (root / "test" / "y" / x.name).unlink()
    return {}, [x, "without a mask"]


PATCH = [patch_smaller_than_patch_strict, patch_mask_missing]


# CSV / .npz inputs: data.csv goes through csv_to_folders first (as the DAG does)

def _demo_csv(tmp: Path, rows=None) -> Path:
    table = pd.read_csv(DEMO / "pneumoniamnist" / "labels.csv").groupby(["split", "label"]).head(3)
    if rows:
        table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    path = tmp / "table.csv"
    table.to_csv(path, index=False)
    return path


def _csv_over(path, **opts):
    return {"data": {"train": None, "test": None, "csv": str(path),
                     "csv_options": {"image_root": str(DEMO / "pneumoniamnist"), **opts}}}


def csv_missing_file(root, tmp):
    path = _demo_csv(tmp, [{"file": "images/not_there.png", "label": "normal", "split": "train"}])
    return _csv_over(path), [DEMO / "pneumoniamnist" / "images" / "not_there.png", "not found"]


def csv_climbs_out(root, tmp):
    path = _demo_csv(tmp, [{"file": "../dsb2018/train/x/2ad489c11ed8b77a.tif", "label": "normal",
                            "split": "train"}])
    return _csv_over(path), [path, "../dsb2018", "climbs out"]


def csv_unknown_label_index(root, tmp):
    table = pd.read_csv(DEMO / "pneumoniamnist" / "labels.csv").head(8)
    table["label"] = [0, 1, 0, 1, 0, 1, 0, 7]
    table.to_csv(tmp / "idx.csv", index=False)
    return _csv_over(tmp / "idx.csv", class_names=["normal", "pneumonia"]), [tmp / "idx.csv", "label 7"]


def csv_unknown_test_label(root, tmp):
    path = _demo_csv(tmp, [{"file": "images/test_0000.png", "label": "covid", "split": "test"}])
    return _csv_over(path), ["covid", "not among the train classes"]


def csv_bad_split(root, tmp):
    path = _demo_csv(tmp, [{"file": "images/train_0000.png", "label": "normal", "split": "holdout"}])
    return _csv_over(path), [path, "'holdout'"]


def npz_without_arrays(root, tmp):
    np.savez(tmp / "data.npz", images=np.zeros((4, 28, 28), np.uint8), labels=np.zeros(4))
    return {"data": {"train": None, "test": None, "csv": str(tmp / "data.npz")}}, [tmp / "data.npz", "train_images"]


def npz_without_labels(root, tmp):
    with np.load(DEMO / "adrenalmnist3d" / "adrenalmnist3d_64_sample.npz") as z:
        np.savez(tmp / "data.npz", train_images=z["train_images"][:4])
    return ({"experiment": {"ndim": 3}, "data": {"train": None, "test": None, "csv": str(tmp / "data.npz"),
                                                  "patch_size": [16, 16, 16]}},
            [tmp / "data.npz", "train_labels"])


CSV = [csv_missing_file, csv_climbs_out, csv_unknown_label_index, csv_unknown_test_label, csv_bad_split,
       npz_without_arrays, npz_without_labels]


# bad config values: the schema and the workflow checks, before any data is read

def cfg_unknown_key(root, tmp):
    return {"train": {"epoch": 3}}, ["train.epoch", "allowed keys"]


def cfg_wrong_type(root, tmp):
    return {"train": {"batch_size": "many"}}, ["train.batch_size"]


def cfg_overlap_one(root, tmp):
    return {"inference": {"overlap": 1.0}}, ["inference.overlap", "0.95"]


def cfg_negative_lr(root, tmp):
    return {"train": {"lr": -1}}, ["train.lr", "greater than 0"]


def cfg_batch_size_zero(root, tmp):
    return {"train": {"batch_size": 0}}, ["train.batch_size"]


def cfg_negative_patch(root, tmp):
    return {"data": {"patch_size": [-64, 64]}}, ["data.patch_size"]


def cfg_duplicate_run_ids(root, tmp):
    return {"experiment": {"run_ids": [1, 2, 1]}}, ["experiment.run_ids", "unique"]


def cfg_unknown_workflow(root, tmp):
    return {"experiment": {"workflow": "segmentation"}}, ["experiment.workflow", "semantic_segmentation"]


def cfg_padding_too_large(root, tmp):
    return ({"experiment": {"workflow": "semantic_segmentation"}, "model": {"architecture": "unet_nd"},
             "data": {"patch_size": [64, 64]}, "inference": {"padding": 32}}, ["inference.padding"])


def cfg_strict_not_bool(root, tmp):
    return {"data": {"strict": "sometimes"}}, ["data.strict"]


CONFIG = [cfg_unknown_key, cfg_wrong_type, cfg_overlap_one, cfg_negative_lr, cfg_batch_size_zero,
          cfg_negative_patch, cfg_duplicate_run_ids, cfg_unknown_workflow, cfg_padding_too_large,
          cfg_strict_not_bool]

CASES = ([("cls", c) for c in CLS] + [("seg", c) for c in SEG] + [("seg3d", c) for c in SEG3D]
         + [("patch", c) for c in PATCH] + [("cls", c) for c in CSV] + [("cfg", c) for c in CONFIG])


def _tree(root: Path) -> dict:
    """Every entry under ``root`` (links not followed): content hash, mtime, or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "->" + os.readlink(p)
            elif p.is_file():
                out[rel] = (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            else:
                out[rel] = "dir"
    return out


def _run(cfg: dict, prepared: Path) -> None:
    """What the DAG runs before training, in-process: config checks, csv_to_folders, both
    validation parts."""
    wf = workflows.validate_config(cfg)
    if wf.runs("csv_to_folders", cfg):
        wf.call("csv_to_folders", cfg)
    wf.validate_dataset(cfg, prepared)


@pytest.fixture(scope="module")
def demo_tree():
    before = _tree(DEMO)
    yield
    assert _tree(DEMO) == before, "demo_data was modified"


def test_corpus_is_large():
    assert len(CASES) >= 30
    assert len({c.__name__ for _, c in CASES}) == len(CASES)


@pytest.mark.parametrize("kind,case", CASES, ids=[c.__name__ for _, c in CASES])
def test_bad_input_fails_before_training_naming_it(kind, case, tmp_path, demo_tree):
    root = BUILD[kind](tmp_path / "data") if kind in BUILD else tmp_path / "data"
    over, expected = case(root, tmp_path)
    results = tmp_path / "results"
    cfg = _cfg(kind, root, results, over)
    before = _tree(tmp_path)
    with pytest.raises(BioflowError) as exc:
        _run(cfg, results / "bad" / "prepared")
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for item in expected:
        assert str(item) in msg, f"{item!s} not in: {msg}"
    # every listed problem names what is wrong and what to do (the part after ';')
    for problem in exc.value.problems or [msg]:
        assert ";" in problem or "should be" in problem or "not allowed" in problem, problem
    # inputs untouched; new files only under result_dir, and at most the manifest of a part
    # without problems (csv_to_folders' tree aside)
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    new = set(after) - set(before)
    assert all(k == "results" or k.startswith("results/") for k in new), new
    assert all(after[k] == "dir" or "/folders/" in k or k.rsplit("/", 1)[-1].startswith("manifest_")
               for k in new), new


def test_every_problem_of_a_dataset_in_one_error(tmp_path):
    """Several broken files, an unseen test class and a wrong architecture: one error, all named."""
    root = _pneumonia(tmp_path / "data")
    expected = []
    for case in (cls_nan, cls_zero_byte, cls_names_differ_in_case, cls_unseen_test_class, cls_symlink_loop):
        expected += case(root, tmp_path)[1]
    cfg = _cfg("cls", root, tmp_path / "results", {"model": {"architecture": "resnet_9000"}})
    with pytest.raises(BioflowError) as exc:
        _run(cfg, tmp_path / "results" / "prepared")
    for item in expected + ["model.architecture"]:
        assert str(item) in str(exc.value)
    assert len(exc.value.problems) == 6


# --- adaptations: named, in the manifest and the report, errors with data.strict ----------

def test_adaptations_are_warned_and_recorded(tmp_path, caplog):
    root = _pneumonia(tmp_path / "data")
    colour = _first(root / "train" / "pneumonia")
    write_image(colour, np.repeat(read_image(colour), 3, axis=-1))
    loose = root / "train" / "README.txt"
    loose.write_text("about")
    cfg = _cfg("cls", root, tmp_path / "results", {})
    wf = workflows.validate_config(cfg)
    train, test = wf.validate_dataset(cfg, tmp_path / "prepared")
    assert train["adaptations"]["colour_to_grey"]["files"] == [str(colour)]
    assert train["adaptations"]["ignored"]["files"] == [str(loose)]
    assert test["adaptations"] == {}
    assert str(colour) in caplog.text and "data.strict" in caplog.text

    seg = _pairs(DEMO / "dsb2018", tmp_path / "seg")
    cfg = _cfg("seg", seg, tmp_path / "results", {"data": {"patch_size": [300, 300]}})
    train, test = workflows.validate_config(cfg).validate_dataset(cfg, tmp_path / "prepared_seg")
    padded = train["adaptations"]["padded"]["files"]
    assert padded and all(Path(p).parent.name == "x" for p in padded)
    assert "[300, 300]" in train["adaptations"]["padded"]["what"]
    assert test["adaptations"]["padded"]["files"]

    # the report lists them, every file named
    from bioflow import report
    run_dir = tmp_path / "run_1"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    page = report.run(cfg, [run_dir], tmp_path / "report.html",
                      manifests=[tmp_path / "prepared" / "manifest_train.json",
                                 tmp_path / "prepared_seg" / "manifest_test.json"]).read_text()
    assert "Adapted inputs" in page
    for f in [str(colour), str(loose)] + test["adaptations"]["padded"]["files"]:
        assert f in page


# --- one real Snakemake run: several problems, non-zero exit, no training ------------------

@pytest.mark.slow
def test_snakemake_stops_before_training_listing_every_problem(tmp_path):
    import yaml
    sys.path.insert(0, str(Path(__file__).parent))
    from helpers_snakemake import snakemake

    root = _pneumonia(tmp_path / "data")
    expected = []
    for case in (cls_truncated, cls_inf, cls_names_differ_in_case, cls_unseen_test_class):
        expected += case(root, tmp_path)[1]
    cfg = _cfg("cls", root, tmp_path / "results",
               {"data": {"patch_size": [28, 28]}, "train": {"epochs": 1}, "metrics": {"bootstrap": 0}})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    before = _tree(root)
    proc = snakemake(tmp_path, tmp_path / "cfg.yaml", "--cores", "1", check=False, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    logs = "".join(p.read_text() for p in (tmp_path / "results").rglob("*.log"))
    for item in expected:
        assert str(item) in logs and str(item) in out, item
    exp = tmp_path / "results" / "bad"
    assert not list(exp.rglob("*.ckpt")) and not list(exp.rglob("train_summary.json"))
    assert "rule validate_train:" in out and "rule validate_test:" in out  # the format looked for
    assert "rule train:" not in out and "rule norm_stats:" not in out
    assert _tree(root) == before
    assert json.dumps(sorted(p.name for p in exp.rglob("manifest_*.json"))) == "[]"
