"""Augmentation: 2D/3D by rank, masks stay aligned, seeded reproducibility."""

import numpy as np
import pytest
import torch

from bioflow.data.augment import affine_matrix, augment, predict_tta, tta_flags, tta_ops, tta_transforms

ALL = {"enabled": True, "flips": True, "rot90": True, "affine": False, "brightness_contrast": False,
       "gaussian_noise": False, "probability": 1.0}


def _blobs(shape, seed=0):
    rng = np.random.default_rng(seed)
    m = np.zeros(shape, np.uint8)
    for _ in range(4):
        c = [rng.integers(min(3, s // 2), max(s - 3, s // 2 + 1)) for s in shape]
        sl = tuple(slice(max(ci - 2, 0), ci + 3) for ci in c)
        m[sl] = rng.integers(1, 4)
    return m


@pytest.mark.parametrize("shape", [(16, 16), (6, 16, 16)])
def test_geometric_transforms_keep_image_equal_to_mask(shape):
    m = _blobs(shape)
    for seed in range(10):
        img, mask = augment(m[None].astype(np.float32), m, ALL, np.random.default_rng(seed))
        assert img.shape == (1, *shape) and mask.shape == shape
        np.testing.assert_array_equal(img[0], mask)  # flips / rot90: exact


@pytest.mark.parametrize("shape", [(32, 32), (4, 32, 32)])
def test_affine_image_bilinear_mask_nearest_stay_aligned(shape):
    m = _blobs(shape, 1)
    cfg = {**ALL, "flips": False, "rot90": False, "affine": True}
    img, mask = augment(m[None].astype(np.float32), m, cfg, np.random.default_rng(3))
    assert set(np.unique(mask)) <= set(np.unique(m))  # nearest: no new label values
    assert not np.array_equal(mask, m)  # it did move
    assert (np.round(img[0]) == mask).mean() > 0.97  # and the image moved the same way


def test_affine_leaves_z_alone():
    mat, off = affine_matrix(3, (5, 9, 9), 30.0, 1.0, (0.0, 0.0))
    assert mat[0].tolist() == [1.0, 0.0, 0.0] and off[0] == 0.0


def test_rotation_in_last_two_axes_only_3d():
    # a volume varying only along z keeps its z profile under any geometric transform
    vol = np.broadcast_to(np.arange(5, dtype=np.float32)[:, None, None], (5, 8, 8))[None].copy()
    cfg = {**ALL, "flips": False}
    out, _ = augment(vol, None, cfg, np.random.default_rng(0))
    np.testing.assert_array_equal(out, vol)


def test_intensity_transforms_touch_image_only_and_are_seeded():
    m = _blobs((16, 16))
    img = m[None].astype(np.float32) + 1
    cfg = {**ALL, "flips": False, "rot90": False, "brightness_contrast": True, "gaussian_noise": True}
    a, ma = augment(img, m, cfg, np.random.default_rng(5))
    b, mb = augment(img, m, cfg, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, m)
    assert not np.allclose(a, img)


def test_disabled_and_nonsquare():
    img = np.random.default_rng(0).random((2, 8, 12)).astype(np.float32)
    out, _ = augment(img, None, {**ALL, "enabled": False}, np.random.default_rng(0))
    np.testing.assert_array_equal(out, img)
    out, _ = augment(img, None, {**ALL, "flips": False}, np.random.default_rng(0))
    assert out.shape == img.shape  # non-square: rotations keep the shape (180 degrees only)


def test_tta_ops_invert():
    x = torch.randn(2, 1, 4, 6, 6)
    ops = tta_ops(x.shape[2:])
    assert len(ops) == 2 * 8  # z flip x the 8 symmetries of the square y-x plane
    for fwd, inv in ops:
        torch.testing.assert_close(inv(fwd(x)), x)
    assert len(tta_ops(x.shape[2:], flips=True, rot90=False)) == 2 ** 3
    assert tta_flags({**ALL, "rot90": False}) == {"flips": True, "rot90": False}
    assert tta_flags({**ALL, "enabled": False}) == {"flips": False, "rot90": False}


@pytest.mark.parametrize("spatial,flags,n", [
    ((8, 8), {}, 8), ((8, 6), {}, 4), ((4, 6, 8), {}, 8), ((4, 6, 6), {}, 16),
    ((8, 8), {"rot90": False}, 4), ((8, 8), {"flips": False}, 4), ((8, 6), {"flips": False}, 2),
])
def test_tta_transforms_are_the_distinct_training_symmetries(spatial, flags, n):
    tr = tta_transforms(spatial, **flags)
    assert len(tr) == n and tr[0] == ((), 0)
    if "flips" in flags:
        assert all(f == () for f, _ in tr)
    if "rot90" in flags:
        assert all(k == 0 for _, k in tr)


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 1, 8, 6), (1, 1, 4, 6, 8)])
def test_predict_tta_leaves_an_equivariant_model_unchanged(shape):
    x = torch.rand(shape)
    torch.testing.assert_close(predict_tta(lambda t: t * 2, x, tta_flags(ALL), dense=True), x * 2)
    # classification: an invariant score (the mean) is unchanged too
    torch.testing.assert_close(predict_tta(lambda t: t.mean((2, 3)), x[..., 0] if x.ndim == 5 else x,
                                           tta_flags(ALL), dense=False),
                               (x[..., 0] if x.ndim == 5 else x).mean((2, 3)))


def test_predict_tta_averages_a_non_equivariant_model():
    x = torch.zeros(1, 1, 4, 4)

    def corner(t):  # marks the top-left pixel whatever the input: TTA spreads it to all corners
        out = torch.zeros_like(t)
        out[:, :, 0, 0] = 1
        return out

    y = predict_tta(corner, x, tta_flags(ALL), dense=True)[0, 0]
    assert torch.isclose(y[0, 0], y[-1, -1]) and torch.isclose(y[0, -1], y[-1, 0]) and y[0, 0] > 0
    assert torch.isclose(y.sum(), torch.tensor(1.0))
    # without rotations and flips nothing is averaged
    assert torch.equal(predict_tta(corner, x, tta_flags({**ALL, "enabled": False}), dense=True), corner(x))
    assert torch.equal(predict_tta(corner, x, None, dense=True), corner(x))


# --- flips per axis (train.augmentation.flips: [x], [x, y], [x, y, z]) -------------------

NO_ROT = {**ALL, "rot90": False}


@pytest.mark.parametrize("shape, flips, mirrored", [
    ((8, 10), ["x"], (1,)), ((8, 10), ["y"], (0,)), ((8, 10), ["x", "y"], (0, 1)), ((8, 10), True, (0, 1)),
    ((8, 10), [], ()), ((8, 10), False, ()),
    ((4, 8, 10), ["x"], (2,)), ((4, 8, 10), ["z"], (0,)), ((4, 8, 10), ["y", "x"], (1, 2)),
    ((4, 8, 10), True, (0, 1, 2)),
])
def test_flips_mirror_exactly_the_named_axes(shape, flips, mirrored):
    img = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)  # no symmetry: every flip shows
    mask = (img % 7).astype(np.uint8)
    out, m = augment(img[None], mask, {**NO_ROT, "flips": flips}, np.random.default_rng(0))  # probability 1
    expected = np.flip(img, mirrored) if mirrored else img
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(m, np.flip(mask, mirrored) if mirrored else mask)


def test_horizontal_flips_never_turn_an_image_upside_down():
    img = np.arange(64, dtype=np.float32).reshape(8, 8)
    cfg = {**NO_ROT, "flips": ["x"], "probability": 0.5}
    seen = set()
    for seed in range(20):
        out, _ = augment(img[None], None, cfg, np.random.default_rng(seed))
        assert np.array_equal(out[0], img) or np.array_equal(out[0], img[:, ::-1])
        seen.add(np.array_equal(out[0], img))
    assert seen == {True, False}  # both outcomes happen


@pytest.mark.parametrize("spatial, flips, rot90, expected", [
    ((8, 8), ["x"], False, [((), 0), ((1,), 0)]),
    ((8, 8), ["y"], False, [((), 0), ((0,), 0)]),
    ((4, 8, 8), ["x", "y"], False, [((), 0), ((1,), 0), ((2,), 0), ((1, 2), 0)]),
    ((4, 8, 8), ["z"], False, [((), 0), ((0,), 0)]),
])
def test_tta_follows_the_training_flip_axes(spatial, flips, rot90, expected):
    assert tta_transforms(spatial, flips, rot90) == expected
    flags = tta_flags({**NO_ROT, "flips": flips})
    assert flags == {"flips": flips, "rot90": False}
    assert len(tta_ops(spatial, **flags)) == len(expected)


def test_a_horizontal_flip_with_quarter_turns_generates_the_whole_square_group():
    # x flips + rot90 generate every symmetry of the square: TTA equals the full set
    assert len(tta_transforms((8, 8), ["x"], True)) == 8


def test_affine_3d_slice_by_slice_equals_the_3d_transform():
    """3D affine runs as the same 2D transform per z slice (z is left alone): same values as
    scipy's 3D transform with the 3D matrix."""
    from scipy import ndimage
    from bioflow.data.augment import affine
    rng = np.random.default_rng(0)
    img = rng.random((2, 5, 17, 19), dtype=np.float32)
    mask = (rng.random((5, 17, 19)) * 3).astype(np.uint8)
    out, m = affine(img, mask, 20.0, 1.05, (1.5, -2.0))
    mat, off = affine_matrix(3, img.shape[1:], 20.0, 1.05, (1.5, -2.0))
    ref = np.stack([ndimage.affine_transform(c, mat, off, order=1, mode="reflect") for c in img])
    np.testing.assert_allclose(out, ref, atol=1e-6)
    np.testing.assert_array_equal(m, ndimage.affine_transform(mask, mat, off, order=0, mode="reflect"))
