"""Pure tiling functions: blending weights, tile plans, reconstruction."""

import numpy as np
import pytest

from bioflow.errors import BioflowError
from bioflow.inference import tiling


@pytest.mark.parametrize("shape", [(64, 64), (8, 32, 48), (5,)])
def test_gaussian_weights_positive_centred(shape):
    w = tiling.gaussian_weights(shape)
    assert w.shape == shape and w.min() > 0 and np.isclose(w.max(), 1.0)
    centre = tuple(n // 2 for n in shape)
    corner = tuple(0 for _ in shape)
    assert w[centre] > w[corner]
    # symmetric
    for ax in range(len(shape)):
        assert np.allclose(w, np.flip(w, ax))
    assert np.all(tiling.blending_weights(shape, "constant") == 1)
    with pytest.raises(BioflowError, match="inference.blending"):
        tiling.blending_weights(shape, "median")


def test_plan_rejects_too_much_padding():
    with pytest.raises(BioflowError, match="inference.padding"):
        tiling.plan_tiles((100, 100), (32, 32), 0.25, 16)


def _identity(batch):
    return batch.astype(np.float32)


@pytest.mark.parametrize("shape,tile,overlap,padding,blend", [
    ((100, 75), (32, 32), 0.25, 4, "gaussian"),
    ((100, 75), (32, 48), 0.0, 0, "constant"),
    ((20, 20), (64, 64), 0.5, 8, "gaussian"),     # image smaller than the tile
    ((33, 47), (16, 16), 0.75, 2, "constant"),
    ((19, 40, 37), (8, 16, 16), 0.25, 2, "gaussian"),
    ((6, 30, 31), (16, 16, 16), 0.5, 4, "constant"),
])
def test_identity_reconstruction(shape, tile, overlap, padding, blend):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(*shape, 2)).astype(np.float32)
    out = tiling.predict_tiled_array(img, _identity, tile, 2, overlap=overlap, padding=padding,
                                     blending=blend, batch_size=3)
    assert out.shape == img.shape
    np.testing.assert_allclose(out, img, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,tile,overlap,padding,blend", [
    ((100, 75), (32, 32), 0.25, 4, "gaussian"),
    ((20, 20), (64, 64), 0.5, 8, "gaussian"),     # image smaller than the tile
    ((19, 40, 37), (8, 16, 16), 0.25, 2, "gaussian"),
    ((6, 30, 31), (16, 16, 16), 0.5, 4, "constant"),
])
def test_tensor_driver_matches_row_driver(shape, tile, overlap, padding, blend):
    """The in-memory tensor driver (the stage's path on any device) blends exactly as the
    row-streaming driver: same geometry, weights and batches."""
    import torch
    rng = np.random.default_rng(2)
    img = rng.normal(size=(*shape, 2)).astype(np.float32)
    mix = rng.normal(size=(2, 3)).astype(np.float32)  # a position-dependent "model": 2 -> 3 channels

    def fn(batch):
        ramp = np.arange(batch.shape[1], dtype=np.float32).reshape(-1, *[1] * (batch.ndim - 2))
        return (batch @ mix + ramp).astype(np.float32)  # tile-relative: blending decides the result

    def fn_t(batch):
        return torch.from_numpy(fn(batch.numpy()))

    plan = tiling.plan_tiles(shape, tile, overlap, padding)
    rows = tiling.predict_tiled_array(img, fn, plan, 3, blending=blend, batch_size=3)
    calls = []
    out = tiling.predict_tiled_tensor(torch.from_numpy(img), lambda b: calls.append(len(b)) or fn_t(b), plan, 3,
                                      blending=blend, batch_size=3)
    assert out.shape == (*shape, 3) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), rows, rtol=1e-5, atol=1e-5)
    assert calls == tiling.batch_sizes(len(plan), 3)  # the same even batches
    with pytest.raises(ValueError, match="predict_fn returned"):
        tiling.predict_tiled_tensor(torch.from_numpy(img), lambda b: fn_t(b)[..., :2], plan, 3, blend, 3)


def test_padding_discards_tile_border():
    """A model that is wrong near tile borders is invisible with enough padding."""
    img = np.random.default_rng(1).random((64, 64, 1)).astype(np.float32)

    def bad_border(batch):
        out = batch.copy()
        out[:, :4] = 99
        out[:, -4:] = 99
        out[:, :, :4] = 99
        out[:, :, -4:] = 99
        return out

    good = tiling.predict_tiled_array(img, bad_border, (32, 32), 1, overlap=0.5, padding=4)
    np.testing.assert_allclose(good, img, atol=1e-5)
    bad = tiling.predict_tiled_array(img, bad_border, (32, 32), 1, overlap=0.5, padding=0)
    assert np.abs(bad - img).max() > 1


def test_rows_written_once_in_order():
    plan = tiling.plan_tiles((50, 20), (16, 16), 0.25, 2)
    padded = tiling.pad_image(np.ones((50, 20, 1), np.float32), plan)
    seen = []
    tiling.predict_tiled(lambda a, b: padded[a:b], _identity, plan, 1,
                         lambda a, rows: seen.append((a, len(rows))))
    starts = [a for a, _ in seen]
    assert starts == sorted(starts) and starts[0] == 0
    assert sum(n for _, n in seen) == 50
    assert all(a + n == b for (a, n), (b, _) in zip(seen, seen[1:]))


@pytest.mark.parametrize("n, batch, expected", [(25, 8, [7, 6, 6, 6]), (16, 8, [8, 8]), (3, 8, [3]),
                                                 (18, 2, [2] * 9), (0, 4, [])])
def test_batch_sizes_split_evenly_without_more_passes(n, batch, expected):
    assert tiling.batch_sizes(n, batch) == expected


def test_tiled_prediction_runs_the_even_batches_and_reconstructs():
    """A 1024^2-like grid of 25 tiles at batch 8: passes of 7, 6, 6, 6 (not 8, 8, 8, 1), same output."""
    img = np.random.default_rng(0).normal(size=(112, 112, 1)).astype(np.float32)
    plan = tiling.plan_tiles(img.shape[:-1], (32, 32), 0.25, 0)
    assert len(plan) == 25
    passes = []

    def fn(batch):
        passes.append(len(batch))
        return batch

    out = tiling.predict_tiled_array(img, fn, plan, 1, batch_size=8)
    assert passes == [7, 6, 6, 6]
    np.testing.assert_allclose(out, img, atol=1e-5)
