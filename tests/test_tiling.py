"""Pure tiling functions: steps, weights, reconstruction, TTA."""

import numpy as np
import pytest

from bioflow.errors import BioflowError
from bioflow.inference import tiling


@pytest.mark.parametrize("size,window,overlap", [
    (256, 256, 0.25), (300, 128, 0.0), (300, 128, 0.5), (1000, 96, 0.25), (129, 128, 0.9), (7, 3, 0.3),
])
def test_steps_cover_exactly(size, window, overlap):
    steps = tiling.compute_steps(size, window, overlap)
    assert steps[0] == 0 and steps[-1] + window == size
    assert steps == sorted(set(steps))
    covered = np.zeros(size, int)
    for s in steps:
        covered[s:s + window] += 1
    assert covered.min() >= 1
    # the step never exceeds the target, so neighbours share at least `overlap` of the window
    gaps = np.diff(steps)
    if len(gaps):
        assert gaps.max() <= max(1, window * (1 - overlap)) + 1e-9


def test_steps_no_overlap_is_minimal():
    assert tiling.compute_steps(512, 128, 0.0) == [0, 128, 256, 384]
    assert tiling.compute_steps(128, 128, 0.5) == [0]
    with pytest.raises(ValueError):
        tiling.compute_steps(100, 128, 0.0)


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


def test_pad_indices_match_numpy_pad():
    a = np.arange(10)
    assert np.array_equal(a[tiling.pad_indices(10, 3, 5)], np.pad(a, (3, 5), mode="reflect"))
    assert np.array_equal(tiling.pad_indices(1, 2, 2), np.zeros(5, int))


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


@pytest.mark.parametrize("ndim,shape", [(2, (2, 8, 8, 1)), (2, (2, 8, 6, 1)), (3, (1, 4, 6, 8, 1))])
def test_tta_equivariant_model_is_unchanged(ndim, shape):
    x = np.random.default_rng(2).random(shape).astype(np.float32)
    np.testing.assert_allclose(tiling.apply_tta(x, _identity, ndim), x, atol=1e-6)
    n = len(tiling.tta_transforms(ndim, shape[ndim - 1] == shape[ndim]))
    assert n == 8 if ndim == 3 or shape[1] == shape[2] else n == 4


def test_tta_averages_a_non_equivariant_model():
    x = np.zeros((1, 4, 4, 1), np.float32)

    def corner(batch):  # marks the top-left pixel whatever the input: TTA spreads it to all corners
        out = np.zeros_like(batch)
        out[:, 0, 0] = 1
        return out

    y = tiling.apply_tta(x, corner, 2)[0, ..., 0]
    assert np.isclose(y[0, 0], y[-1, -1]) and np.isclose(y[0, -1], y[-1, 0]) and y[0, 0] > 0
    assert np.isclose(y.sum(), 1.0)
