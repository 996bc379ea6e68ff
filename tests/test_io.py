"""bioflow.io: round trips for every format, axis handling, atomic writes, bad files."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import tifffile

from bioflow import io
from bioflow.errors import BioflowError

RNG = np.random.default_rng(0)


def _array(shape, dtype):
    if np.issubdtype(dtype, np.integer):
        return RNG.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    return RNG.normal(size=shape).astype(dtype)


# (suffix, channels-last shape, ndim, dtype): every format in 2D / 3D / multi-channel
CASES = []
for ext in (".tif", ".npy", ".npz", ".h5"):
    for shape, nd in (((24, 31, 1), 2), ((24, 31, 3), 2), ((24, 31, 5), 2),
                      ((6, 24, 31, 1), 3), ((6, 24, 31, 2), 3)):
        for dt in (np.uint8, np.uint16, np.int32, np.float32, np.float64):
            CASES.append((ext, shape, nd, dt))
for shape, dt in (((24, 31, 1), np.uint8), ((24, 31, 1), np.uint16), ((24, 31, 3), np.uint8),
                  ((24, 31, 4), np.uint8)):
    CASES.append((".png", shape, 2, dt))


@pytest.mark.parametrize("ext,shape,ndim,dtype", CASES,
                         ids=[f"{e}-{'x'.join(map(str, s))}-{np.dtype(d).name}" for e, s, _, d in CASES])
def test_round_trip_keeps_values_shape_and_dtype(tmp_path, ext, shape, ndim, dtype):
    a = _array(shape, dtype)
    path = io.write_image(tmp_path / f"img{ext}", a)
    b = io.read_image(path, ndim=ndim, channels=shape[-1])
    assert b.dtype == a.dtype
    assert b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    assert io.image_info(path, ndim=ndim, channels=shape[-1]) == (a.shape, a.dtype.name)


def test_jpg_round_trip_is_close(tmp_path):
    a = np.full((16, 20, 3), 120, np.uint8)
    io.write_image(tmp_path / "a.jpg", a)
    b = io.read_image(tmp_path / "a.jpg", channels=3)
    assert b.shape == a.shape and b.dtype == np.uint8
    assert np.abs(b.astype(int) - 120).max() <= 2


@pytest.mark.parametrize("writer", ["tif", "npy", "h5"])
def test_channel_first_2d_is_moved_last(tmp_path, writer):
    a = _array((3, 20, 30), np.uint16)  # (c, y, x)
    p = tmp_path / f"cf.{writer}"
    if writer == "tif":
        tifffile.imwrite(p, a, photometric="minisblack")
    elif writer == "npy":
        np.save(p, a)
    else:
        with h5py.File(p, "w") as f:
            f["data"] = a
    for axis in ("auto", "first"):
        b = io.read_image(p, ndim=2, channels=3, channel_axis=axis)
        assert b.shape == (20, 30, 3)
        np.testing.assert_array_equal(b, np.moveaxis(a, 0, -1))
        assert io.image_info(p, ndim=2, channels=3, channel_axis=axis)[0] == (20, 30, 3)


def test_channel_first_3d_and_imagej_hyperstack(tmp_path):
    a = _array((2, 5, 16, 18), np.uint8)  # (c, z, y, x)
    np.save(tmp_path / "czyx.npy", a)
    b = io.read_image(tmp_path / "czyx.npy", ndim=3, channels=2, channel_axis="first")
    np.testing.assert_array_equal(b, np.moveaxis(a, 0, -1))
    b = io.read_image(tmp_path / "czyx.npy", ndim=3, channels=2)  # auto: leading axis == channels
    assert b.shape == (5, 16, 18, 2)
    zcyx = np.moveaxis(a, 0, 1)  # ImageJ order
    tifffile.imwrite(tmp_path / "ij.tif", zcyx, imagej=True, metadata={"axes": "ZCYX"})
    b = io.read_image(tmp_path / "ij.tif", ndim=3, channels=2)
    np.testing.assert_array_equal(b, np.moveaxis(a, 0, -1))


def test_channel_axis_last_forced_and_grey_gets_channel_axis(tmp_path):
    a = _array((4, 20, 4), np.uint8)  # ambiguous: both ends are 4
    np.save(tmp_path / "a.npy", a)
    assert io.read_image(tmp_path / "a.npy", channels=4, channel_axis="last").shape == (4, 20, 4)
    assert io.read_image(tmp_path / "a.npy", channels=4, channel_axis="first").shape == (20, 4, 4)
    g = _array((20, 30), np.uint8)
    io.write_image(tmp_path / "g.png", g)
    assert io.read_image(tmp_path / "g.png").shape == (20, 30, 1)


def test_rgba_png_read_as_rgb_when_three_channels(tmp_path):
    a = _array((10, 12, 4), np.uint8)
    io.write_image(tmp_path / "rgba.png", a)
    b = io.read_image(tmp_path / "rgba.png", channels=3)
    np.testing.assert_array_equal(b, a[..., :3])
    assert io.read_image(tmp_path / "rgba.png", channels=4).shape == (10, 12, 4)


def test_colour_read_with_one_channel_becomes_luminance(tmp_path):
    a = _array((10, 12, 4), np.uint8)
    io.write_image(tmp_path / "rgba.png", a)
    g = io.read_image(tmp_path / "rgba.png", channels=1)
    expect = np.rint(a[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114])
    assert g.shape == (10, 12, 1) and g.dtype == np.uint8
    assert np.abs(g[..., 0].astype(int) - expect).max() <= 1
    assert io.image_info(tmp_path / "rgba.png", channels=1) == ((10, 12, 1), "uint8")
    from PIL import Image
    la = _array((10, 12, 2), np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "la.png", channels=1), la[..., :1])
    # a channel-first array is not a colour image: left alone (validation reports it)
    np.save(tmp_path / "cf.npy", _array((3, 10, 12), np.uint16))
    assert io.read_image(tmp_path / "cf.npy", channels=1).shape == (10, 12, 3)


def test_demo_files_read_in_convention(demo_data):
    p2 = sorted((demo_data / "dsb2018" / "train" / "x").iterdir())[0]
    p3 = sorted((demo_data / "nuclei3d" / "train" / "x").iterdir())[0]
    assert io.read_image(p2).shape == (256, 256, 1)
    assert io.read_image(p3, ndim=3).shape == (32, 128, 128, 1)
    assert io.image_info(p3, ndim=3) == ((32, 128, 128, 1), "uint16")
    m = io.read_mask(sorted((demo_data / "nuclei3d" / "train" / "y").iterdir())[0], ndim=3)
    assert m.shape == (32, 128, 128) and m.dtype == np.uint16


def test_3d_file_in_2d_config_and_2d_in_3d_fail_naming_file(demo_data, tmp_path):
    p3 = sorted((demo_data / "nuclei3d" / "train" / "x").iterdir())[0]
    with pytest.raises(BioflowError, match=str(p3)):
        io.read_image(p3, ndim=2, channels=1)
    p2 = sorted((demo_data / "dsb2018" / "train" / "x").iterdir())[0]
    with pytest.raises(BioflowError, match=str(p2)):
        io.read_image(p2, ndim=3)
    rgb = tmp_path / "rgb.tif"
    io.write_image(rgb, _array((10, 12, 3), np.uint8))
    with pytest.raises(BioflowError, match="ndim"):
        io.read_image(rgb, ndim=3, channels=1)


def test_read_mask_squeezes_singleton_channel(tmp_path):
    m = _array((10, 12, 1), np.uint16)
    np.save(tmp_path / "m.npy", m)
    out = io.read_mask(tmp_path / "m.npy", ndim=2)
    assert out.shape == (10, 12) and out.dtype == np.uint16
    np.save(tmp_path / "m3.npy", _array((10, 12, 3), np.uint8))
    with pytest.raises(BioflowError, match="m3.npy"):
        io.read_mask(tmp_path / "m3.npy", ndim=2)


def test_h5_and_npz_keys(tmp_path):
    a, b = _array((8, 9), np.uint8), _array((8, 9), np.float32)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_group("g")["first"] = a
        f["g/second"] = b
    assert io.read_image(tmp_path / "f.h5").shape == (8, 9, 1)
    np.testing.assert_array_equal(io.read_image(f"{tmp_path}/f.h5:g/second")[..., 0], b)
    io.write_image(f"{tmp_path}/w.h5:raw", a[..., None])
    np.testing.assert_array_equal(io.read_image(f"{tmp_path}/w.h5:raw")[..., 0], a)
    np.savez(tmp_path / "z.npz", one=a, two=b)
    np.testing.assert_array_equal(io.read_image(f"{tmp_path}/z.npz:two")[..., 0], b)
    with pytest.raises(BioflowError, match="three"):
        io.read_image(f"{tmp_path}/z.npz:three")


@pytest.mark.parametrize("ext", [".png", ".tif", ".npy", ".h5"])
def test_truncated_file_raises_naming_it(tmp_path, ext):
    p = tmp_path / f"bad{ext}"
    io.write_image(p, _array((64, 64, 1), np.uint8))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(BioflowError, match=f"bad\\{ext}"):
        io.read_image(p)


def test_missing_and_non_image_files(tmp_path):
    with pytest.raises(BioflowError, match="nope.tif"):
        io.read_image(tmp_path / "nope.tif")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(BioflowError, match="notes.txt"):
        io.read_image(tmp_path / "notes.txt")


def test_list_images_sorted_skips_hidden_and_other_files(tmp_path):
    for n in ("b.png", "a.tif", ".hidden.png", "readme.txt", "c.NPY"):
        (tmp_path / n).write_bytes(b"x")
    assert [p.name for p in io.list_images(tmp_path)] == ["a.tif", "b.png", "c.NPY"]


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out.tif"

    def broken(path, data, **kw):
        with open(path, "wb") as f:
            f.write(b"II*\x00 partial")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError):
        io.write_image(target, _array((8, 8, 1), np.uint8))
    assert os.listdir(tmp_path) == []
    # an existing file is left intact by a failed overwrite
    monkeypatch.undo()
    good = _array((8, 8, 1), np.uint8)
    io.write_image(target, good)
    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError):
        io.write_image(target, _array((8, 8, 1), np.uint8))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["out.tif"]
    np.testing.assert_array_equal(io.read_image(target), good)


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "sub" / "x.txt"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            assert tmp.parent == target.parent and tmp.name.startswith(".")
            raise RuntimeError("killed")
    assert not target.exists() and os.listdir(target.parent) == []
    with io.atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"


def test_write_json_converts_numpy_and_is_atomic(tmp_path):
    p = io.write_json(tmp_path / "a.json", {"a": np.int64(3), "b": np.float32(0.5),
                                            "c": np.arange(3), "d": tmp_path})
    assert io.read_json(p) == {"a": 3, "b": 0.5, "c": [0, 1, 2], "d": str(tmp_path)}
    with pytest.raises(TypeError):
        io.write_json(tmp_path / "b.json", {"x": object()})
    assert sorted(os.listdir(tmp_path)) == ["a.json"]


def test_png_rejects_unsupported_arrays(tmp_path):
    with pytest.raises(BioflowError, match="x.png"):
        io.write_image(tmp_path / "x.png", _array((4, 8, 8, 1), np.uint8))
    with pytest.raises(BioflowError, match="y.png"):
        io.write_image(tmp_path / "y.png", _array((8, 8, 1), np.float32))
    assert os.listdir(tmp_path) == []


def test_atomic_dir_swaps_whole_folder(tmp_path):
    target = tmp_path / "tree"
    with io.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with io.atomic_dir(target) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("killed")
    assert sorted(os.listdir(target)) == ["a.txt"]  # old tree kept
    with io.atomic_dir(target) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(os.listdir(target)) == ["c.txt"]
    assert sorted(os.listdir(tmp_path)) == ["tree"]
