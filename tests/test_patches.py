"""Patch classification, stage by stage on data the tests make: validation of quadra's layout,
the patch dataset (info.json, h5 regions read back against the masks, grid class folders),
reconstruction rules, the head, the deployment folder's loading rules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers_patches import CLASSES, make_sample, sample_config
from helpers_stages import call, prepare

from bioflow import workflows
from bioflow.config import validate as validate_config
from bioflow.data import patch_sampling as ps
from bioflow.errors import BioflowError
from bioflow.io import read_image, read_mask, write_image
from bioflow.metrics.patch import priority_rank, reconstruct
from bioflow.prepare import patches


def test_grid_by_size_with_overlap_and_by_number():
    size, ys, xs = patches.grid((100, 64), patch_size=[32, 32])
    assert size == (32, 32) and ys == [0, 32, 64, 68] and xs == [0, 32]
    size, ys, xs = patches.grid((64, 64), patch_size=[32, 32], overlap=0.5)
    assert ys == [0, 16, 32]
    size, ys, xs = patches.grid((100, 60), patch_number=[3, 2])
    assert len(ys) == 3 and len(xs) == 2 and ys[0] == 0 and ys[-1] + size[0] == 100 and xs[-1] + size[1] == 60
    assert patches.grid((20, 20), patch_size=[32, 32])[1:] == ([0], [0])  # padded to one patch


def test_grid_patch_label_follows_quadras_thresholds():
    mask = np.zeros((64, 64), np.uint8)
    mask[0:20, 0:20] = 1          # 400 px defect: 39 % of a 32x32 patch, all of it inside
    mask[40:64, 40:64] = 2        # 576 px
    from skimage.measure import label
    lab = label(mask > 0)
    area = np.bincount(lab.ravel())
    sl = (slice(0, 32), slice(0, 32))
    # below area_threshold but the whole defect is inside: defect by area_defect_threshold
    assert patches.grid_patch_label(mask[sl], lab[sl], area, 0.45, 0.2) == (1, False)
    # a sliver: 4 % of the bar and 2 % of the patch -> ambiguous, discarded
    sl = (slice(10, 42), slice(60 - 32, 42))
    sub = mask[sl].copy()
    sub[:] = 0
    sub[-2:, -10:] = 2
    lab_sub = np.where(sub > 0, lab[40, 40], 0)
    assert patches.grid_patch_label(sub, lab_sub, area, 0.45, 0.2) == (0, True)
    assert patches.grid_patch_label(np.zeros((8, 8), np.uint8), np.zeros((8, 8), int), area, 0.45, 0.2) == (0, False)


def test_triangulation_covers_the_region_exactly_and_samples_inside():
    region = np.zeros((40, 50), bool)
    region[5:20, 3:30] = True
    region[20:35, 10:15] = True           # an L shape
    region[30:33, 40:48] = True           # a second part
    tri, w = patches.triangulate_region(region)
    a, b = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    areas = np.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]) / 2
    assert areas.sum() == region.sum() and np.isclose(w.sum(), 1)
    rng = np.random.default_rng(0)
    pts = [ps.trisample(tri[rng.choice(len(w), p=w)], rng) for _ in range(3000)]
    ys, xs = np.array(pts, int).T
    assert region[ys, xs].all()
    # uniform: the small part (24 px of 524) gets its share
    assert abs(np.mean((ys >= 30) & (ys < 33) & (xs >= 40)) - 24 / region.sum()) < 0.02
    assert patches.triangulate_region(np.zeros((4, 4), bool)) == (None, None)


@pytest.fixture
def sample_cfg(tmp_path):
    data = make_sample(tmp_path / "data")
    return validate_config(sample_config(data, tmp_path / "results"))


def test_validation_pairs_images_masks_and_counts_maskless_images_good(sample_cfg, tmp_path):
    wf = workflows.get("patch_classification")
    train, test = wf.validate_dataset(sample_cfg, tmp_path / "prep")
    assert train["patch_layout"] == "images_masks" and train["classes"] == ["good", "bright", "dark"]
    entries = train["splits"]["train"] + train["splits"]["val"] + test["splits"]["test"]
    assert len(entries) == 12 and sum(e["mask"] is None for e in entries) == 4
    assert (len(train["splits"]["val"]), len(test["splits"]["test"])) == (3, 3)
    names = {Path(e["path"]).name for e in entries}
    assert len(names) == 12  # the three parts are disjoint
    # rerun: the same split (seeded)
    again, again_test = wf.validate_dataset(sample_cfg, tmp_path / "prep2")
    assert [e["path"] for e in again_test["splits"]["test"]] == [e["path"] for e in test["splits"]["test"]]


def test_validation_lists_every_problem_at_once(sample_cfg, tmp_path):
    data = Path(sample_cfg["data"]["train"])
    write_image(data / "masks" / "orphan_mask.png", np.zeros((96, 128), np.uint8), channels_last=False)
    write_image(data / "masks" / "im01_mask.png", np.full((96, 128), 7, np.uint8), channels_last=False)
    (data / "images" / "notes.txt").write_text("x")
    with pytest.raises(BioflowError) as err:
        workflows.get("patch_classification").validate_dataset(sample_cfg, tmp_path / "prep")
    text = "\n".join(err.value.problems)
    assert "orphan_mask.png: mask without an image" in text and "patches.mask_extension" in text
    assert "im01_mask.png: mask holds value 7 >= model.n_classes=3" in text
    assert "notes.txt: not an image file" in text


def test_config_checks_name_the_keys(tmp_path):
    base = sample_config(tmp_path, tmp_path)
    bad = json.loads(json.dumps(base))
    bad["patches"].update(patch_size=None, class_to_idx={"good": 0, "x": 2}, class_priority=["nope"])
    with pytest.raises(BioflowError) as err:
        workflows.validate_config(bad)
    text = "\n".join(err.value.problems)
    assert "patches.patch_size / patches.patch_number: give exactly one" in text
    assert "patches.class_to_idx: values must be 0..1" in text
    assert "patches.class_priority: ['nope']" in text


def test_patch_dataset_layout_h5_regions_and_grid_folders(sample_cfg):
    prepare(sample_cfg)
    info = call(sample_cfg, "patch_dataset")
    root = Path(sample_cfg["experiment"]["result_dir"]) / "pt" / "prepared" / "patches"
    assert json.loads((root / "info.json").read_text()) == info
    assert info["class_to_idx"] == CLASSES and len(info["train_files"]) == 6
    assert {"patch_size", "overlap", "area_threshold", "annotated_good", "val_files", "test_files"} <= set(info)
    lines = (root / "train" / "dataset.txt").read_text().splitlines()
    # balance_defects: one good line per annotated defect; a maskless image gives one good line
    n_defects = sum(1 for f in info["train_files"] if f["mask_path"]
                    and read_mask(root / f["mask_path"]).any())
    labels = [ln.rsplit(",", 1)[1] for ln in lines]
    assert labels.count("bright") + labels.count("dark") == n_defects
    assert info["counts"]["train"] == {c: labels.count(c) for c in sorted(set(labels))}
    rng = np.random.default_rng(0)
    for line in lines:
        name, cls = line.rsplit(",", 1)
        with h5py.File(root / "train" / name) as f:
            assert tuple(f["patch_size"][()]) == (32, 32)
            assert np.isclose(f["triangles_weights"][()].sum(), 1) and f["triangles"].shape[1:] == (3, 2)
            mask_path = f["mask_path"][()].decode() if "mask_path" in f else None
        region = ps.read_region(root / "train" / name, root)
        image = read_image(region.img_path)
        mask = read_mask(root / mask_path) if mask_path else np.zeros(image.shape[:2], np.uint8)
        for _ in range(5):
            patch, (y, x) = ps.draw(region, image, rng)
            np.testing.assert_array_equal(patch, image[y:y + 32, x:x + 32])
            m = mask[y:y + 32, x:x + 32]
            if cls == "good":
                assert not m.any(), name  # good patches stay a patch away from every defect
            else:
                assert (m == CLASSES[cls]).any(), name  # defect patches hold their defect
    for split in ("val", "test"):
        files = sorted((root / split).rglob("*.png"))
        grids = ps.grid_patches(root / split)
        assert len(grids) == len(files) == 12 * len(info[f"{split}_files"])  # 3 x 4 patches per image
        g = next(g for g in grids if g.class_name in ("bright", "dark"))
        item = next(f for f in info[f"{split}_files"] if Path(f["image_path"]).stem == g.image)
        size, ys, xs = patches.grid((96, 128), [32, 32])
        y, x = ys[g.index // len(xs)], xs[g.index % len(xs)]
        np.testing.assert_array_equal(read_image(g.path), read_image(root / item["image_path"])[y:y + 32, x:x + 32])
        assert (read_mask(root / item["mask_path"])[y:y + 32, x:x + 32] == CLASSES[g.class_name]).mean() > 0
        assert sum(info["counts"][split].values()) + info["discarded"][split] == len(files)


def test_classification_folders_hold_drawn_training_patches_and_unambiguous_val_patches(tmp_path):
    data = make_sample(tmp_path / "data")
    cfg = validate_config(sample_config(data, tmp_path / "results", classification_folders=3))
    prepare(cfg)
    info = call(cfg, "patch_dataset")
    root = Path(cfg["experiment"]["result_dir"]) / "pt" / "prepared" / "patches"
    lines = (root / "train" / "dataset.txt").read_text().splitlines()
    per_class = {c: 3 * sum(ln.endswith("," + c) for ln in lines) for c in CLASSES}
    assert info["classification_counts"]["train"] == {c: n for c, n in sorted(per_class.items()) if n}
    for cls, n in per_class.items():
        files = sorted((root / "classification" / "train" / cls).glob("*.png"))
        assert len(files) == n
        for f in files:
            patch = read_image(f)[..., 0].astype(int)
            assert patch.shape == (32, 32)
            # the sample's defects: bright squares (~170) and dark bars (~30) on ~100 texture
            assert ((patch > 150).mean() > 0.02) == (cls == "bright"), f
            assert ((patch < 50).mean() > 0.02) == (cls == "dark"), f
    val = {c: sorted(p.name for p in (root / "classification" / "val" / c).glob("*.png"))
           for c in CLASSES if (root / "classification" / "val" / c).is_dir()}
    assert {c: len(v) for c, v in val.items()} == info["counts"]["val"] == info["classification_counts"]["val"]
    assert not any(n.startswith(ps.DISCARD) for v in val.values() for n in v)
    for c, names in val.items():
        for n in names:
            assert read_image(root / "classification" / "val" / c / n).tobytes() == \
                read_image(root / "val" / c / n).tobytes()
    # what the classification workflow reads: the same classes, every file a labelled image
    ccfg = validate_config({"experiment": {"name": "bb", "workflow": "classification",
                                           "result_dir": str(tmp_path / "results")},
                            "data": {"train": str(root / "classification" / "train"),
                                     "val": str(root / "classification" / "val"), "channels": 1,
                                     "patch_size": [32, 32]},
                            "model": {"architecture": "simple_cnn", "n_classes": 3}})
    train, _ = workflows.get("classification").validate_dataset(ccfg, tmp_path / "bb_prep")
    assert train["classes"] == sorted(CLASSES)
    assert len(train["splits"]["train"]) == sum(per_class.values())
    assert len(train["splits"]["val"]) == sum(info["counts"]["val"].values())
    # off by default: no folder
    off = validate_config(sample_config(data, tmp_path / "r2"))
    prepare(off)
    assert "classification_counts" not in call(off, "patch_dataset")
    assert not (tmp_path / "r2" / "pt" / "prepared" / "patches" / "classification").exists()


def test_class_folder_layout_puts_the_free_class_first(tmp_path):
    rng = np.random.default_rng(1)
    for cls in ("MT_Crack", "MT_Free", "MT_Blowhole"):
        for i in range(3):
            mask = np.zeros((64, 64), np.uint8)
            if cls != "MT_Free":
                mask[10:30, 10:30] = 255
            write_image(tmp_path / "mt" / cls / f"{cls}{i}.jpg", rng.integers(0, 255, (64, 64), dtype=np.uint8))
            write_image(tmp_path / "mt" / cls / f"{cls}{i}.png", mask)
    cfg = validate_config({"experiment": {"name": "mt", "workflow": "patch_classification",
                                          "result_dir": str(tmp_path / "r")},
                           "data": {"train": str(tmp_path / "mt")}, "model": {"architecture": "raw_pixels",
                                                                            "n_classes": 3},
                           "patches": {"patch_size": [32, 32], "val_size": 0.34}})
    prepare(cfg)
    info = call(cfg, "patch_dataset")
    assert info["classes"] == ["MT_Free", "MT_Blowhole", "MT_Crack"]
    masks = [read_mask(tmp_path / "r" / "mt" / "prepared" / "patches" / f["mask_path"])
             for f in info["train_files"] if "MT_Crack" in f["image_path"]]
    assert masks and all(set(np.unique(m)) == {0, 2} for m in masks)  # binary masks -> the folder's class


def test_reconstruction_major_voting_and_priority():
    rank = priority_rank(["good", "a", "b"], None)
    # 2 x 2 patches of 4 px, step 2 (overlap 0.5) on a 6 x 6 image
    ys = xs = [0, 2]
    preds = [1, 2, 2, 0]
    vote = reconstruct((6, 6), (4, 4), ys, xs, preds, 3, "major_voting", rank)
    prio = reconstruct((6, 6), (4, 4), ys, xs, preds, 3, "priority", rank)
    assert vote[0, 0] == 1 and vote[5, 5] == 0 and vote[3, 3] == 2   # b: 2 votes vs a: 1
    assert prio[2, 2] == 2 and prio[0, 0] == 1
    prio_a = reconstruct((6, 6), (4, 4), ys, xs, preds, 3, "priority", priority_rank(["good", "a", "b"], ["a"]))
    assert prio_a[2, 2] == 1 and prio_a[0, 5] == 2
    assert not reconstruct((6, 6), (4, 4), ys, xs, [0, 0, 0, 0], 3, "major_voting", rank).any()


def test_automatic_batch_size_halves_on_out_of_memory():
    from bioflow.models.patch_features import batched
    sizes = []

    def fn(a, b):
        sizes.append(b - a)
        if b - a > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate")
        return list(range(a, b))

    out = batched(fn, 10, 16, automatic=True)
    assert sum(out, []) == list(range(10)) and sizes[:3] == [10, 8, 4]
    with pytest.raises(RuntimeError):
        batched(fn, 10, 16, automatic=False)


def test_head_by_import_path_with_clear_errors():
    from bioflow.training.patch_head import make_head
    p = {"classifier": "sklearn.svm.SVC", "classifier_kwargs": {"C": 2.0}, "standardize": False}
    assert make_head(p).C == 2.0
    with pytest.raises(BioflowError, match="patches.classifier: cannot import"):
        make_head({**p, "classifier": "sklearn.svm.Nope"})
    with pytest.raises(BioflowError, match="patches.classifier_kwargs: not accepted"):
        make_head({**p, "classifier_kwargs": {"bogus": 1}})
    with pytest.raises(BioflowError, match="not a scikit-learn classifier"):
        make_head({**p, "classifier": "sklearn.linear_model.LinearRegression", "classifier_kwargs": {}})


def test_deployment_is_loaded_only_from_a_named_folder_with_its_hash(tmp_path):
    import joblib
    from sklearn.dummy import DummyClassifier

    from bioflow.inference.patch import load_deployment
    from bioflow.io import file_sha256, write_json
    dep = tmp_path / "dep"
    dep.mkdir()
    joblib.dump(DummyClassifier(), dep / "head.joblib")
    (dep / "backbone.pt").write_bytes(b"")
    write_json(dep / "model.json", {"head_sha256": "0" * 64})
    with pytest.raises(BioflowError, match="not a deployment folder named by the config"):
        load_deployment(dep, [tmp_path / "other"])
    with pytest.raises(BioflowError, match="does not match the SHA-256"):
        load_deployment(dep, [dep])
    write_json(dep / "model.json", {"head_sha256": file_sha256(dep / "head.joblib")})
    os.remove(dep / "backbone.pt")
    with pytest.raises(BioflowError, match="lacks backbone.pt"):
        load_deployment(dep, [dep])


def test_training_lines_filters_and_balance(tmp_path):
    txt = tmp_path / "dataset.txt"
    txt.write_text("a_good.h5,good\na_1.h5,crack\nb_good.h5,good\nb_1.h5,hole\nc_good.h5,good\n")
    samples, targets = ps.load_train_file(txt, include_filter=["a_", "b_"], exclude_filter=["_1"])
    assert [Path(s).name for s in samples] == ["a_good.h5", "b_good.h5"] and targets == ["good", "good"]
    _, targets = ps.load_train_file(txt, class_to_skip=["hole"])
    assert "hole" not in targets and len(targets) == 4
    samples, targets = ps.balance(*ps.load_train_file(txt))
    assert {t: targets.count(t) for t in set(targets)} == {"good": 3, "crack": 3, "hole": 3}


def test_annotated_good_regions_avoid_real_defects():
    mask = np.zeros((128, 128), np.uint8)
    mask[10:40, 10:40] = 3      # annotated as good (e.g. a known harmless mark)
    mask[20:30, 45:55] = 1      # a real defect next to it
    good, regions = patches.train_regions(mask, 16, 16, annotated_good=[3])
    by_class = {cls: region for _, cls, region in regions}
    assert set(by_class) == {1, 3}
    # no centre of an annotated-good patch lies within a patch of the real defect
    from scipy.ndimage import maximum_filter
    near_defect = maximum_filter((mask == 1).astype(np.uint8), size=16).astype(bool)
    assert not (by_class[3] & near_defect).any() and by_class[3].any()


def test_a_bioflow_checkpoint_is_a_backbone_and_a_mismatch_is_named(tmp_path):
    import torch

    from bioflow.models import build_model
    from bioflow.models.patch_features import build_backbone
    cfg = {"experiment": {"workflow": "classification", "ndim": 2}, "data": {"channels": 1, "patch_size": [32, 32]},
           "model": validate_config(sample_config(tmp_path, tmp_path))["model"] | {"architecture": "simple_cnn"}}
    model = build_model(cfg)
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(0.5)
    ck = tmp_path / "run.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"cfg": cfg}}, ck)
    backbone = build_backbone({**cfg["model"], "weights": str(ck)}, 1, [32, 32])
    for (name, a), b in zip(backbone.state_dict().items(), model.backbone.state_dict().values()):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in backbone.parameters()) and not backbone.training
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(backbone(x), model.backbone.eval()(x))
    with pytest.raises(BioflowError, match="is a bioflow checkpoint of a 'simple_cnn', not model.architecture"):
        build_backbone({**cfg["model"], "architecture": "resnet18", "weights": str(ck)}, 1, [32, 32])


def test_feature_stages_pool_and_concatenate_intermediate_stages(tmp_path):
    import torch

    from bioflow.models.patch_features import build_backbone, export_torchscript
    model = {"architecture": "resnet18", "weights": None, "pretrained": False, "kwargs": {}, "n_classes": 3,
             "dense_units": [], "dropout": 0.0, "metadata_units": [64]}
    torch.manual_seed(0)
    staged = build_backbone(model, 1, [32, 32], [3, 4])
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        out = staged(x)
        inner = staged.backbone.forward_intermediates(x, indices=[3, 4], intermediates_only=True)
    assert out.shape == (3, 256 + 512)  # resnet18's layer3 + layer4 widths
    torch.testing.assert_close(out[:, :256], inner[0].mean(dim=(2, 3)))
    torch.testing.assert_close(out[:, 256:], inner[1].mean(dim=(2, 3)))
    assert not any(p.requires_grad for p in staged.parameters()) and not staged.training
    # what the deployment ships: the traced wrapper gives the same features
    traced = torch.jit.load(str(export_torchscript(staged, 1, [32, 32], tmp_path / "b.pt")))
    torch.testing.assert_close(traced(x), out)
    with pytest.raises(BioflowError, match="patches.feature_stages: 'simple_cnn' has no stages"):
        build_backbone({**model, "architecture": "simple_cnn", "features": [8, 16]}, 1, [32, 32], [1])


def test_patches_are_resized_as_the_classification_workflow_resizes():
    from bioflow.data.classification import fit_to_size
    from bioflow.models.patch_features import to_tensor
    patch = np.random.default_rng(0).integers(0, 255, (64, 64, 1)).astype(np.uint8)
    none = {"type": "none", "per_image": False, "percentiles": [1.0, 99.8]}
    ours = to_tensor([patch], None, none, [32, 32])[0].numpy()
    theirs = fit_to_size(patch.transpose(2, 0, 1).astype(np.float32), (32, 32))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_a_bioflow_checkpoint_brings_its_own_input_normalization(tmp_path):
    import torch

    from bioflow.models.patch_features import input_normalization
    ours = {"type": "zscore", "per_image": False, "percentiles": [1.0, 99.8]}
    norm_json = tmp_path / "normalization.json"
    norm_json.write_text(json.dumps({"mean": [100.0], "std": [10.0]}))
    trained = {"type": "percentile", "per_image": False, "percentiles": [2.0, 98.0]}
    ck = tmp_path / "run.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {
        "cfg": {"data": {"normalization": trained}, "model": {"architecture": "simple_cnn"}},
        "normalization": {"p_low": [3.0], "p_high": [240.0]}}}, ck)
    # the checkpoint's training normalization, not data.normalization with this experiment's statistics
    assert input_normalization({"weights": str(ck)}, ours, norm_json) == (trained, {"p_low": [3.0], "p_high": [240.0]})
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(1)}, plain)
    for weights in (None, str(plain)):
        assert input_normalization({"weights": weights}, ours, norm_json) == (ours, {"mean": [100.0], "std": [10.0]})
    assert input_normalization({"weights": None}, {**ours, "per_image": True}, norm_json)[1] is None


def test_patch_f1_bootstrap_agrees_with_sklearn():
    from sklearn.metrics import confusion_matrix, f1_score

    from bioflow.metrics.patch import f1_from_confusion, patch_f1_ci
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    yp = np.where(rng.random(500) < 0.6, y, rng.integers(0, 4, 500))
    np.testing.assert_allclose(f1_from_confusion(confusion_matrix(y, yp, labels=range(4))),
                               f1_score(y, yp, labels=range(4), average=None, zero_division=0))
    ci = patch_f1_ci(y, yp, ["a", "b", "c", "d"], 200)
    lo, hi = ci["f1_macro"]
    assert lo < f1_score(y, yp, average="macro") < hi and hi - lo < 0.2


def test_h5_files_written_by_several_processes_are_the_same(sample_cfg, tmp_path):
    from bioflow.io import read_json
    prepare(sample_cfg)
    wf = workflows.get("patch_classification")
    job = wf.job("patch_dataset", sample_cfg)
    one = patches.run(sample_cfg, job.input["manifest"], tmp_path / "one", job.input["test_manifest"])
    two = patches.run(sample_cfg, job.input["manifest"], tmp_path / "two", job.input["test_manifest"], num_workers=2)
    assert one == two == read_json(tmp_path / "two" / "info.json")
    assert (tmp_path / "one/train/dataset.txt").read_text() == (tmp_path / "two/train/dataset.txt").read_text()
    for f in (tmp_path / "one" / "train").glob("*.h5"):
        with h5py.File(f) as a, h5py.File(tmp_path / "two" / "train" / f.name) as b:
            np.testing.assert_array_equal(a["triangles"][()], b["triangles"][()])
