"""z / yz median filters and the postprocess stage."""

import numpy as np
import tifffile

from bioflow import postprocess as pp


def test_z_filter_removes_single_slice_outlier_only_along_z():
    vol = np.zeros((5, 4, 4), np.uint8)
    vol[2, 1, 1] = 1                     # a one-slice blip: removed by a z median of 3
    vol[:, 3, :] = 1                     # a structure constant along z: kept
    out = pp.z_filter(vol, 3)
    assert out[2, 1, 1] == 0 and out[:, 3, :].all()
    # a blip in x only (present in every slice) is not touched by a z filter
    vol2 = np.zeros((5, 4, 4), np.uint8)
    vol2[:, 1, 1] = 1
    assert np.array_equal(pp.z_filter(vol2, 3), vol2)
    assert np.array_equal(pp.z_filter(vol, 0), vol)


def test_yz_filter_window_and_channels():
    vol = np.zeros((5, 5, 3), np.float32)
    vol[2, 2, 1] = 1.0                   # isolated in z-y: removed
    vol[:, :, 0] = 1.0                   # full z-y plane at x=0: kept
    out = pp.yz_filter(vol, 3)
    assert out[2, 2, 1] == 0 and (out[:, :, 0] == 1).all()
    # a line along y (3 pixels) at one z is removed by the yz median (needs 5 of 9)
    v = np.zeros((5, 5, 5), np.uint8)
    v[2, 1:4, 2] = 1
    assert pp.yz_filter(v, 3).sum() == 0
    assert pp.z_filter(v, 3).sum() == 0
    probs = np.random.default_rng(0).random((4, 6, 6, 2)).astype(np.float32)
    out = pp.z_filter(probs, 3)
    assert out.shape == probs.shape
    assert np.allclose(out[..., 1], pp.z_filter(probs[..., 1], 3))


def test_run_2d_stack(tmp_path):
    ind, outd = tmp_path / "per_image", tmp_path / "post"
    ind.mkdir()
    stack = np.ones((3, 8, 8), np.uint8)
    stack[1, 2, 2] = 0                   # hole in the middle slice only
    for i, sl in enumerate(stack):
        tifffile.imwrite(ind / f"img{i}.tif", sl)
    cfg = {"experiment": {"ndim": 2}, "postprocess": {"z_filter": 3, "yz_filter": 0}}
    written = pp.run(cfg, ind, outd)
    assert [p.name for p in written] == ["img0.tif", "img1.tif", "img2.tif"]
    assert tifffile.imread(outd / "img1.tif")[2, 2] == 1


def test_run_3d(tmp_path):
    ind, outd = tmp_path / "per_image", tmp_path / "post"
    ind.mkdir()
    v = np.zeros((6, 5, 5), np.uint8)
    v[3, 2, 2] = 1
    tifffile.imwrite(ind / "vol.tif", v)
    pp.run({"experiment": {"ndim": 3}, "postprocess": {"z_filter": 3, "yz_filter": 3}}, ind, outd)
    assert tifffile.imread(outd / "vol.tif").sum() == 0
