"""normalize() math, compute_stats exactness, and the norm_stats stage on demo data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bioflow.data import normalization as nz
from bioflow.errors import BioflowError

RNG = np.random.default_rng(1)


def _images(n=6, shape=(20, 24, 2), dtype=np.uint16):
    return [(RNG.random(shape) * 3000 + 100 * c).astype(dtype) for c in range(n)]


def test_compute_stats_exact_mean_std_min_max_and_percentiles():
    ims = _images()
    s = nz.compute_stats(ims, percentiles=(2, 98))
    px = np.concatenate([i.reshape(-1, 2) for i in ims]).astype(np.float64)
    np.testing.assert_allclose(s["mean"], px.mean(0), rtol=1e-10)
    np.testing.assert_allclose(s["std"], px.std(0), rtol=1e-10)
    np.testing.assert_array_equal(s["min"], px.min(0))
    np.testing.assert_array_equal(s["max"], px.max(0))
    # the sample covers every pixel here, so percentiles are exact
    np.testing.assert_allclose(s["percentile_low"], np.percentile(px, 2, axis=0), rtol=1e-5)
    np.testing.assert_allclose(s["percentile_high"], np.percentile(px, 98, axis=0), rtol=1e-5)
    assert s["channels"] == 2 and s["dtype"] == "uint16" and s["dtype_max"] == 65535.0


def test_compute_stats_sample_is_bounded_and_seeded():
    ims = _images(n=10, shape=(100, 100, 1))
    a = nz.compute_stats(ims, sample_budget=5000, n_images=10)
    b = nz.compute_stats(ims, sample_budget=5000, n_images=10)
    assert a["n_sampled"] == 10 * 500 and a["n_pixels"] == 100_000
    assert a == b
    px = np.concatenate([i.ravel() for i in ims]).astype(float)
    assert abs(a["percentile_high"][0] - np.percentile(px, 99.8)) < 0.02 * px.max()


def test_compute_stats_rejects_mixed_channels():
    with pytest.raises(BioflowError, match="channels"):
        nz.compute_stats([np.zeros((4, 4, 1)), np.zeros((4, 4, 2))])


def test_zscore_with_train_stats_standardises_the_train_set():
    ims = _images()
    s = nz.compute_stats(ims)
    out = np.concatenate([nz.normalize(i, s, {"type": "zscore"}).reshape(-1, 2) for i in ims])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(0), 1, atol=1e-4)


def test_zscore_per_image_ignores_stats_and_3d_works():
    vol = (RNG.random((4, 10, 12, 1)) * 50 + 7).astype(np.float32)
    out = nz.normalize(vol, None, {"type": "zscore", "per_image": True})
    assert out.shape == vol.shape
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-4
    const = np.full((5, 5, 1), 3, np.uint8)  # zero std must not divide by zero
    assert np.isfinite(nz.normalize(const, None, {"type": "zscore", "per_image": True})).all()


def test_percentile_clips_and_scales_to_unit_range():
    ims = _images()
    s = nz.compute_stats(ims, percentiles=(1, 99))
    out = nz.normalize(ims[0], s, {"type": "percentile", "percentiles": [1, 99]})
    assert out.min() >= 0 and out.max() <= 1
    lo, hi = s["percentile_low"][0], s["percentile_high"][0]
    x = ims[0][..., 0].astype(np.float64)
    np.testing.assert_allclose(out[..., 0], (np.clip(x, lo, hi) - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    per = nz.normalize(ims[0], None, {"type": "percentile", "per_image": True, "percentiles": [0, 100]})
    np.testing.assert_allclose(per.min(axis=(0, 1)), 0) and np.testing.assert_allclose(per.max(axis=(0, 1)), 1)
    with pytest.raises(BioflowError, match="percentiles"):
        nz.normalize(ims[0], s, {"type": "percentile", "percentiles": [2, 98]})


def test_scale_range_dtype_max_and_observed_max():
    u8 = np.array([[0, 51, 255]], np.uint8)[..., None]
    np.testing.assert_allclose(nz.normalize(u8, None, {"type": "scale_range"})[..., 0], [[0, 0.2, 1]])
    u16 = np.array([[65535, 0]], np.uint16)[..., None]
    np.testing.assert_allclose(nz.normalize(u16, None, {"type": "scale_range"})[..., 0], [[1, 0]])
    f = np.array([[1.0, 4.0]], np.float32)[..., None]
    np.testing.assert_allclose(nz.normalize(f, {"max": [8.0]}, {"type": "scale_range"})[..., 0], [[0.125, 0.5]])
    np.testing.assert_allclose(nz.normalize(f, None, {"type": "scale_range", "per_image": True})[..., 0], [[0.25, 1]])
    with pytest.raises(BioflowError, match="norm_stats"):
        nz.normalize(f, None, {"type": "scale_range"})


def test_none_is_a_float_copy_and_cfg_forms_accepted():
    a = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
    out = nz.normalize(a, None, {"data": {"normalization": {"type": "none"}}})
    assert out.dtype == np.float32 and np.array_equal(out, a) and out is not a


def test_channel_mismatch_and_bad_type():
    s = nz.compute_stats(_images())
    with pytest.raises(BioflowError, match="channel"):
        nz.normalize(np.zeros((4, 4, 3), np.uint8), s, {"type": "zscore"})
    with pytest.raises(BioflowError, match="data.normalization.type"):
        nz.normalize(np.zeros((4, 4, 1)), s, {"type": "minmax"})


def test_norm_stats_stage_on_demo_segmentation(make_cfg, demo_data, tmp_path):
    from helpers_stages import validate_run
    cfg = make_cfg("semantic_segmentation",
                   data={"train": str(demo_data / "dsb2018" / "train"), "mask_transform": "foreground"})
    validate_run(cfg, tmp_path / "manifest.json")
    manifest = tmp_path / "manifest" / "manifest_train.json"
    paths = [tmp_path / n for n in ("norm.json", "mean.npy", "std.npy")]
    stats = nz.run(cfg, manifest, *paths)
    assert json.loads(paths[0].read_text())["mean"] == stats["mean"]
    assert np.load(paths[1]).shape == (1,) and np.load(paths[1]).dtype == np.float32
    np.testing.assert_allclose(np.load(paths[2]), stats["std"], rtol=1e-6)
    # train split only: recompute from the manifest's train entries
    from bioflow.data.manifest import load_manifest, read_entry_image
    m = load_manifest(manifest)
    px = np.concatenate([read_entry_image(m, e).ravel() for e in m["splits"]["train"]]).astype(float)
    n_files = len(list((demo_data / "dsb2018" / "train" / "x").iterdir()))
    assert stats["n_images"] == len(m["splits"]["train"]) == n_files - len(m["splits"]["val"])
    assert len(m["splits"]["val"]) >= 1  # val was split off and is excluded
    np.testing.assert_allclose(stats["mean"][0], px.mean(), rtol=1e-9)
    assert nz.load_stats(paths[0]) == stats
    again = nz.run(cfg, manifest, *paths)
    assert again == stats


def test_load_stats_errors_name_the_file(tmp_path):
    with pytest.raises(BioflowError, match="missing.json"):
        nz.load_stats(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{\"a\": 1}")
    with pytest.raises(BioflowError, match="x.json"):
        nz.load_stats(tmp_path / "x.json")


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int8", "bool", "float32", "int32"])
def test_percentiles_equal_numpy(dtype):
    rng = np.random.default_rng(3)
    if dtype == "bool":
        img = rng.random((37, 41, 2)) > 0.7
    elif dtype == "float32":
        img = rng.normal(size=(37, 41, 2)).astype(np.float32)
    else:
        info = np.iinfo(dtype)
        img = rng.integers(max(info.min, -3000), min(info.max, 3000), (37, 41, 2), endpoint=True).astype(dtype)
    q = [0.0, 1.0, 37.5, 50.0, 99.8, 100.0]
    got = nz.percentiles(img, q)
    want = np.percentile(img.reshape(-1, 2).astype(np.float64), q, axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # the normalisation sees the same values: per-image percentile of the stored dtype
    out = nz.normalize(img, None, {"type": "percentile", "per_image": True, "percentiles": [1.0, 99.8]})
    lo, hi = want[1], want[4]
    ref = (np.clip(img.astype(np.float32), lo, hi) - lo.astype(np.float32)) / np.where(hi - lo > 1e-8, hi - lo, 1).astype(np.float32)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["zscore", "percentile", "scale_range"])
@pytest.mark.parametrize("dtype", ["uint16", "int8", "float32"])
def test_image_stats_the_same_for_any_chunking(monkeypatch, kind, dtype):
    """Per-image statistics from row chunks (streamed inference) equal those of the whole image
    (training, validation, in-memory inference); a float image above FLOAT_SAMPLE voxels is
    sampled by voxel index, so the chunking does not change the sample either."""
    monkeypatch.setattr(nz, "FLOAT_SAMPLE", 500)
    rng = np.random.default_rng(5)
    img = (rng.normal(40, 30, (23, 17, 9, 2))).clip(-120, 120).astype(dtype)
    ncfg = {"type": kind, "per_image": True, "percentiles": [1.0, 99.8]}
    whole = nz.image_stats(img, ncfg)
    for cuts in ([5, 6, 18], [1], list(range(1, 23))):
        parts = np.split(img, cuts)
        chunked = nz.image_stats(iter(parts), ncfg, n_voxels=23 * 17 * 9)
        assert chunked.keys() == whole.keys()
        for k in whole:
            np.testing.assert_allclose(chunked[k], whole[k], rtol=1e-12, atol=1e-9, err_msg=k)
    # and normalize() with per_image applies exactly these statistics
    np.testing.assert_array_equal(nz.normalize(img, None, ncfg), nz.normalize_with(img, whole, ncfg))
    if kind == "percentile" and dtype != "float32":  # exact: from the histogram
        np.testing.assert_allclose(whole["percentile_high"], np.percentile(img.reshape(-1, 2), 99.8, axis=0))
    if kind == "percentile" and dtype == "float32":  # 500 of 3519 voxels, spread over the image
        assert abs(whole["percentile_low"][0] - np.percentile(img[..., 0], 1.0)) < 15
    if kind == "scale_range" and dtype != "float32":  # integers: by the dtype's max, nothing read
        assert "max" not in whole
    else:  # a chunk missing is an error, not statistics of part of the image
        with pytest.raises(ValueError, match="voxels"):
            nz.image_stats(iter(np.split(img, [5])[:1]), ncfg, n_voxels=23 * 17 * 9)
