"""Grid index arithmetic shared by training patches and inference tiles."""

import numpy as np
import pytest

from bioflow.geometry import compute_steps, pad_indices, pad_min


@pytest.mark.parametrize("size,window,overlap", [
    (256, 256, 0.25), (300, 128, 0.0), (300, 128, 0.5), (1000, 96, 0.25), (129, 128, 0.9), (7, 3, 0.3),
])
def test_steps_cover_exactly(size, window, overlap):
    steps = compute_steps(size, window, overlap)
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
    assert compute_steps(512, 128, 0.0) == [0, 128, 256, 384]
    assert compute_steps(128, 128, 0.5) == [0]
    with pytest.raises(ValueError):
        compute_steps(100, 128, 0.0)


def test_pad_indices_match_numpy_pad():
    a = np.arange(10)
    assert np.array_equal(a[pad_indices(10, 3, 5)], np.pad(a, (3, 5), mode="reflect"))
    assert np.array_equal(pad_indices(1, 2, 2), np.zeros(5, int))


def test_pad_min_reflects_small_images():
    img = np.arange(12, dtype=np.float32).reshape(3, 4, 1)
    mask = (img[..., 0] > 5).astype(np.uint8)
    pi, pm = pad_min(img, mask, (5, 4))
    assert pi.shape == (5, 4, 1) and pm.shape == (5, 4)
    assert np.array_equal(pi[3], img[1]) and np.array_equal(pm[4], mask[0])
