"""One normalization path: the voxels of training patches, validation patches and tiled
inference (in memory and streamed) are normalized by the same function with the same statistics.

Issue 13: on nuclei3d the validation strip was scaled by its own percentiles (99.8th: 22762)
while the training volume was scaled by its own (38600), so validation judged the model on
inputs it never trained on. Here train, val and test are different images (val and test dimmer,
as there), and each path's model input is compared with ``normalize(image, stats)`` where
``stats`` is what the config says: the train set's (``per_image: false``) or the image's own.
The stages run as in the workflow (validate, norm_stats, the train stage up to ``fit``, predict).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from bioflow.data.normalization import load_stats, normalize
from bioflow.inference import segmentation as seg
from bioflow.layout import Layout
from bioflow.training import segmentation as tseg
from helpers_stages import call, prepare

SHAPE = {2: (72, 24), 3: (10, 24, 20)}  # 2D: more rows than the old streamed row subsample (64)
PATCH = {2: [16, 16], 3: [8, 16, 16]}


def _folders(root: Path, ndim: int) -> dict[str, np.ndarray]:
    """train / val / test uint16 images: the same bright blobs on a dim background, each with
    its own noise, val and test dimmer (as nuclei3d's val strip and test region)."""
    rng = np.random.default_rng(ndim)
    shape = SHAPE[ndim]
    grid = np.indices(shape)
    blobs = np.zeros(shape)
    for _ in range(8):
        c = [rng.integers(0, n) for n in shape]
        blobs += 9000 * np.exp(-sum((g - ci) ** 2 for g, ci in zip(grid, c)) / 12.0)
    raw = {}
    for split, gain in (("train", 1.0), ("val", 0.5), ("test", 0.7)):
        img = (np.clip(blobs + rng.normal(600, 80, shape), 0, None) * gain).astype(np.uint16)
        for sub, arr in (("x", img), ("y", (blobs > 4000).astype(np.uint8))):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / split / sub / "im.tif", arr)
        raw[split] = img
    return raw


class Probe(torch.nn.Module):
    """Logits (0, x) of the input x: softmax foreground = sigmoid(x), so the per_image output
    (probabilities) gives back the normalized input voxel by voxel."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(()))  # inference asks a model for its device

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), x * self.gain], dim=1)


def _found_in(patch: np.ndarray, image: np.ndarray) -> bool:
    """Whether ``patch`` (*p, c) equals ``image`` (*s, c) cut at some start."""
    sp = patch.shape[:-1]
    for start in itertools.product(*(range(n - p + 1) for n, p in zip(image.shape[:-1], sp))):
        cut = image[tuple(slice(s, s + p) for s, p in zip(start, sp))]
        if np.array_equal(cut, patch):
            return True
    return False


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ndim", [2, 3])
def test_training_validation_and_inference_normalize_alike(make_cfg, tmp_path, monkeypatch, ndim, per_image):
    raw = _folders(tmp_path / "data", ndim)
    norm = {"type": "percentile", "per_image": per_image}
    cfg = make_cfg("semantic_segmentation", experiment={"ndim": ndim},
                   data={**{s: str(tmp_path / "data" / s) for s in ("train", "val", "test")},
                         "patch_size": PATCH[ndim], "normalization": norm,
                         "sampling": {"foreground_bias": 0.5}},
                   model={"architecture": "unet_nd", "features": [4, 8]},
                   train={"steps_per_epoch": 3, "batch_size": 2, "n_sample_images": 0,
                          "augmentation": {"enabled": False}},
                   inference={"overlap": 0.5, "padding": 2, "argmax": False, "batch_size": 3, "precision": "32"})
    prepare(cfg)
    lay = Layout.of(cfg)
    train_stats = load_stats(lay.norm_json)
    # what each image must become: by its own statistics, or by the train set's
    own = {s: normalize(img[..., None], None, {**norm, "per_image": True}) for s, img in raw.items()}
    by_train = {s: normalize(img[..., None], train_stats, {**norm, "per_image": False}) for s, img in raw.items()}
    want = own if per_image else by_train
    # the val and test images' own scales differ from the train set's: a path that used the
    # other statistics would fail below
    assert np.abs(own["val"] - by_train["val"]).max() > 0.3
    assert np.abs(own["test"] - by_train["test"]).max() > 0.2

    # training and validation as the train stage sets them up (fit replaced by a capture)
    got = {}
    monkeypatch.setattr(tseg, "fit", lambda cfg, run_id, module, dm, *a, **k: got.update(module=module, dm=dm) or {})
    call(cfg, "train", 1)
    dm, hp = got["dm"], got["module"].hparams
    assert hp["normalization"] == train_stats  # what inference will use travels with the model
    for x, _ in itertools.islice(iter(dm.train_dataloader()), 2):
        for patch in x.numpy():
            assert _found_in(np.moveaxis(patch, 0, -1), want["train"])
    n_val = 0
    for x, _ in dm.val_dataloader():
        for patch in x.numpy():
            assert _found_in(np.moveaxis(patch, 0, -1), want["val"])
            n_val += 1
    assert n_val >= 4

    # inference: the real predict stage with the probe as the trained model, in memory and streamed
    ckpt = tmp_path / "probe.ckpt"
    ckpt.write_bytes(b"probe")
    monkeypatch.setattr(seg, "load_model_from_checkpoint", lambda path: (Probe(), hp))
    manifest_test = lay.manifest_test
    for name, budget in (("in_memory", 1e4), ("streamed", 1e-4)):
        run_cfg = {**cfg, "inference": {**cfg["inference"], "memory_budget_mb": budget}}
        out = tmp_path / name
        seg.predict(run_cfg, 1, ckpt, manifest_test, out)
        assert list(pd.read_csv(out / "predictions.csv")["streamed"]) == [name == "streamed"]
        p = tifffile.imread(out / "per_image" / "im.tif")[..., 1].astype(np.float64)
        x = np.log(p / (1 - p))  # the model's input, back from sigmoid
        np.testing.assert_allclose(x, want["test"][..., 0], atol=2e-5, err_msg=name)
