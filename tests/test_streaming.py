"""Chunked inference: the streamed result equals the in-memory one; peak memory is bounded."""

import tracemalloc

import numpy as np
import pytest
import tifffile
import torch

from bioflow.geometry import pad_indices
from bioflow.inference import segmentation as seg, streaming, tiling
from bioflow.models.segmentation import UNetND


def _model(ndim):
    torch.manual_seed(0)
    m = UNetND(ndim, 1, 2, features=(4, 8), residual=True)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for mod in m.modules():
            if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _cfg(ndim, tile, argmax, per_image=False):
    return {"experiment": {"ndim": ndim}, "model": {"n_classes": 2}, "train": {"ignore_index": None},
            "data": {"patch_size": tile, "normalization": {"type": "zscore", "per_image": per_image}},
            "inference": {"overlap": 0.5, "padding": 2, "blending": "gaussian", "tta": False, "argmax": argmax,
                          "batch_size": 3, "full_image": True, "binarize_threshold": 0.5}}


@pytest.mark.parametrize("ndim,shape,tile,writer", [
    (3, (23, 20, 18), [8, 12, 12], "plain"),        # uncompressed TIFF: memmap
    (3, (17, 16, 20), [8, 8, 8], "zlib"),           # compressed stack: page by page
    (2, (61, 37), [16, 16], "npy"),                 # .npy: np.load(mmap_mode='r')
])
@pytest.mark.parametrize("argmax", [True, False])
def test_streamed_equals_in_memory(tmp_path, ndim, shape, tile, writer, argmax):
    rng = np.random.default_rng(0)
    vol = (rng.random(shape) * 1000).astype(np.uint16)
    if writer == "npy":
        path = tmp_path / "img.npy"
        np.save(path, vol)
    else:
        path = tmp_path / "img.tif"
        tifffile.imwrite(path, vol, compression="zlib" if writer == "zlib" else None)
    src = streaming.open_rows(path, ndim, 1)
    assert src.streamed and src.shape == (*shape, 1)
    manifest = {"ndim": ndim, "channels": 1, "channel_axis": "auto"}
    stats = {"mean": [500.0], "std": [280.0]}
    model, cfg = _model(ndim), _cfg(ndim, tile, argmax)
    outs = {}
    for name, budget in (("mem", 1e4), ("stream", 1e-3)):
        rd = tmp_path / name
        row = seg.predict_image({"path": str(path)}, manifest, model, cfg, stats, rd, memory_budget_mb=budget)
        assert row["streamed"] == (name == "stream")
        outs[name] = {f: tifffile.imread(rd / f / "img.tif") for f in seg.FOLDERS}
    # the tiled outputs match; whole-image inference does not fit a streamed image, so its
    # full_image is the tiled result
    assert np.array_equal(outs["stream"]["full_image"], outs["stream"]["per_image"])
    for f in ("per_image", "per_image_binarized"):
        a, b = outs["mem"][f], outs["stream"][f]
        assert a.shape == b.shape
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)  # same tiles, same batches: bitwise equal
    expected = shape if argmax else (*shape, 2)
    assert outs["mem"]["per_image"].shape == expected


def test_peak_memory_bounded_when_streaming(tmp_path):
    """A tall volume streamed with tiles of 8 rows: peak numpy memory stays a small fraction of
    the in-memory footprint and within the bound the tiling guarantees (tile + 2 cores of rows)."""
    shape, tile, k = (240, 48, 48), (8, 16, 16), 2
    path = tmp_path / "tall.tif"
    tifffile.imwrite(path, np.random.default_rng(0).random(shape).astype(np.float32))
    src = streaming.open_rows(path, 3, 1)
    plan = tiling.plan_tiles(shape, tile, 0.25, 2)
    idx0 = pad_indices(shape[0], *plan.pad_width[0])
    rest = [pad_indices(n, *pw) for n, pw in zip(shape[1:], plan.pad_width[1:])]

    def reader(a, b):
        rows = idx0[a:b]
        lo = int(rows.min())
        chunk = src.read(lo, int(rows.max()) + 1)[rows - lo]
        for ax, idx in enumerate(rest, start=1):
            chunk = np.take(chunk, idx, axis=ax)
        return chunk.astype(np.float32)

    out, pending = streaming.output_memmap(tmp_path / "out.tif", (*shape, k), np.float32)
    predict_fn = lambda b: np.repeat(b, k, axis=-1)  # noqa: E731

    def write(a, rows):
        out[a:a + len(rows)] = rows

    tracemalloc.start()
    tiling.predict_tiled(reader, predict_fn, plan, k, write, "gaussian", 4)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    streaming.finish_output(out, pending)
    full = int(np.prod(shape)) * 4 * (1 + 2 * k + 1)       # input + accumulators + output, in memory
    row_bytes = int(np.prod(plan.padded_shape[1:])) * 4
    bound = (tile[0] + 2 * plan.core[0]) * row_bytes * (2 + 2 * k) + 4 * int(np.prod(tile)) * 4 * (1 + k) * 2
    assert peak < bound < full / 4
    res = tifffile.imread(tmp_path / "out.tif")
    np.testing.assert_allclose(res[..., 1], tifffile.imread(path), atol=1e-5)
