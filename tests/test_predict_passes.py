"""One forward pass per tile: per-patch counts derived from the tiled prediction."""

import numpy as np
import pytest

from bioflow.inference import segmentation as seg
from bioflow.inference import tiling


def _fn(calls):
    def predict_fn(batch):  # a deterministic per-pixel "model": class 1 where the channel mean > 0
        calls.append(len(batch))
        fg = (batch.mean(-1) > 0).astype(np.float32)
        return np.stack([1 - fg * 0.8, fg * 0.8 + 0.1], axis=-1)
    return predict_fn


@pytest.mark.parametrize("shape, tile", [((70, 50), (32, 32)), ((20, 40, 36), (8, 16, 16)), ((16, 16), (32, 32))])
def test_tiled_patch_counts_equal_independent_pass_at_the_same_geometry(shape, tile):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(*shape, 2)).astype(np.float32)
    mask = (rng.random(shape) > 0.5).astype(np.uint8)
    calls = []
    independent = seg.patch_counts(image, mask, _fn(calls), tile, 2, batch_size=4)
    n_independent = sum(calls)
    calls.clear()
    probs = tiling.predict_tiled_array(image, _fn(calls), tile, 2, overlap=0.25, padding=2)
    derived = seg.patch_counts_tiled(probs.argmax(-1), mask, tile, 2)
    assert [p["start"] for p in derived] == [p["start"] for p in independent]
    # a per-pixel model predicts the same wherever the tile sits: the counts agree exactly
    assert [p["counts"] for p in derived] == [p["counts"] for p in independent]
    assert n_independent == len(seg.patch_starts(shape, tile))  # the pass the default saves
