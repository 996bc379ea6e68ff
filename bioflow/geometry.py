"""Index arithmetic on array grids, shared by training patches and inference tiles.

Pure numpy, importing no other bioflow module: ``bioflow.data`` (grid validation patches,
padding small training images) and ``bioflow.inference`` (tile plans, padding to a size
divisor) both need it, and data must not import inference, so it sits below both.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def compute_steps(size: int, window: int, overlap: float) -> list[int]:
    """Start positions of windows of length ``window`` covering ``[0, size)`` exactly.

    ``overlap`` is the fraction of the window shared with its neighbour (0 = none). As in
    nnU-Net, the number of windows is the smallest that respects the target step
    ``window * (1 - overlap)``, and the actual step is spread evenly so the last window ends
    exactly at ``size``.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if size < window:
        raise ValueError(f"size {size} is smaller than the window {window}; pad the image first")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    target = max(1.0, window * (1.0 - overlap))
    n = int(math.ceil((size - window) / target)) + 1
    if n == 1:
        return [0]
    actual = (size - window) / (n - 1)
    return [int(round(actual * i)) for i in range(n)]


def pad_indices(n: int, before: int, after: int) -> np.ndarray:
    """Source index of every position of an axis of length ``n`` reflect-padded by (before, after).

    ``np.pad(..., mode='reflect')`` on an ``arange``; a length-1 axis repeats its single value.
    Indexing with this map equals ``np.pad`` on the data, but works on a slab of a larger file.
    """
    mode = "reflect" if n > 1 else "edge"
    return np.pad(np.arange(n), (before, after), mode=mode)


def pad_min(image: np.ndarray, mask: np.ndarray | None, size: Sequence[int]):
    """Reflect-pad (end of each axis) ``image`` ``(*spatial, c)`` and ``mask`` ``(*spatial)`` so
    every spatial axis is at least ``size``."""
    sp = image.shape[:-1]
    widths = [(0, max(0, int(t) - n)) for n, t in zip(sp, size)]
    for ax, (_, a) in enumerate(widths):
        if a:
            idx = pad_indices(sp[ax], 0, a)
            image = np.take(image, idx, axis=ax)
            if mask is not None:
                mask = np.take(mask, idx, axis=ax)
    return image, mask
