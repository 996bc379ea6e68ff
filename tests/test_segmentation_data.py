"""Patch sampling (pure), channel conversion, datasets."""

import numpy as np
import pytest
import torch

from bioflow.data import segmentation as sd
from bioflow.errors import BioflowError


def test_probability_map_mixture():
    mask = np.zeros((10, 10), np.uint8)
    mask[:2, :5] = 1                                  # 10 fg of 100 pixels
    p = sd.probability_map(mask, 0.5)
    assert np.isclose(p.sum(), 1.0, atol=1e-5)
    assert np.isclose(p[mask > 0].sum(), 0.5 + 0.5 * 0.1, atol=1e-5)
    assert np.allclose(sd.probability_map(np.zeros((4, 4)), 0.9), 1 / 16)   # no fg: uniform


def test_sample_center_follows_bias():
    mask = np.zeros((50, 50), np.uint8)
    mask[10:12, 30:33] = 1
    fg = np.flatnonzero(mask)
    rng = np.random.default_rng(0)
    hits = [mask[sd.sample_center(mask.shape, fg, 1.0, rng)] for _ in range(200)]
    assert all(hits)
    hits = [mask[sd.sample_center(mask.shape, fg, 0.5, rng)] for _ in range(2000)]
    assert 0.4 < np.mean(hits) < 0.6
    hits = [mask[sd.sample_center(mask.shape, fg, 0.0, rng)] for _ in range(2000)]
    assert np.mean(hits) < 0.02


def test_patch_start_keeps_centre_inside():
    assert sd.patch_start((0, 0), (100, 80), (32, 32)) == (0, 0)
    assert sd.patch_start((99, 79), (100, 80), (32, 32)) == (68, 48)
    assert sd.patch_start((50, 40), (100, 80), (32, 32)) == (34, 24)
    assert sd.patch_start((5, 50, 50), (10, 100, 100), (8, 32, 32)) == (1, 34, 34)


def test_to_channels():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 100
    g = sd.to_channels(rgb, 1)
    assert g.shape == (4, 4, 1) and g.dtype == np.uint8 and g[0, 0, 0] == 30
    rgba = np.ones((4, 4, 4), np.uint8)
    assert sd.to_channels(rgba, 3).shape == (4, 4, 3)
    with pytest.raises(BioflowError, match="data.channels"):
        sd.to_channels(np.zeros((4, 4, 2)), 3, "f.tif")


def test_check_mask_names_the_file():
    with pytest.raises(BioflowError, match="m.tif.*model.n_classes"):
        sd.check_mask(np.array([0, 1, 7]), 2, "m.tif")
    assert sd.check_mask(np.array([0, 1, 255]), 2, "m.tif", ignore_index=255).max() == 255


@pytest.mark.parametrize("shape,patch", [((40, 50), (16, 16)), ((12, 40, 30), (8, 16, 16))])
def test_patch_datasets(shape, patch):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        mask = (rng.random(shape) > 0.9).astype(np.uint8)
        img = np.stack([mask.astype(np.float32)] * 2, -1)
        samples.append(sd.Sample(f"s{i}", img, mask, shape))
    ds = sd.PatchDataset(samples, patch, 10, foreground_bias=1.0)
    x, y = ds[4]
    assert x.shape == (2, *patch) and y.shape == patch and y.dtype == torch.int64
    assert torch.equal(x[0].long(), y)                      # image and mask cut at the same place
    assert y[tuple(p // 2 for p in patch)] == 1 or y.sum() > 0
    grid = sd.GridPatchDataset(samples, patch)
    covered = [np.zeros(shape, int) for _ in samples]
    for i, st in grid.items:
        covered[i][tuple(slice(s, s + p) for s, p in zip(st, patch))] += 1
    assert all(c.min() >= 1 for c in covered)
    assert len(sd.GridPatchDataset(samples, patch, max_patches=4)) == 4


def test_joint_augment_keeps_alignment():
    aug_cfg = {"enabled": True, "flips": True, "rot90": True, "affine": False, "brightness_contrast": False,
               "gaussian_noise": False, "probability": 1.0}
    cfg = {"experiment": {"ndim": 2}, "train": {"augmentation": aug_cfg}}
    aug = sd.make_augment(cfg)
    mask = np.zeros((8, 8), np.uint8)
    mask[1, 2] = 1
    img = mask[..., None].astype(np.float32)
    x, y = aug(img, mask, np.random.default_rng(3))
    assert x.shape == (8, 8, 1) and np.array_equal(x[..., 0] > 0.5, y > 0)
