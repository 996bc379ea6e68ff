"""Mask transforms applied when masks are loaded (validation, training, metrics).

``data.mask_transform``:

* ``none``: masks already hold class ids ``0..n_classes-1``;
* ``foreground``: ``mask > 0`` -> 1 (instance or 0/255 masks become binary);
* ``boundary_interior``: from instance labels, 0 background / 1 boundary / 2 interior.
  Boundaries are the *inner* boundaries of each instance
  (``skimage.segmentation.find_boundaries(mode="inner")``) so background stays 0 and two
  touching instances are separated by boundary pixels on both sides.

2D and 3D masks share the code (``find_boundaries`` is N-dimensional).
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import find_boundaries

from bioflow.errors import BioflowError

MASK_TRANSFORMS = ("none", "foreground", "boundary_interior")
# classes each transform produces (None: whatever the masks hold)
TRANSFORM_CLASSES = {"none": None, "foreground": 2, "boundary_interior": 3}


def apply_mask_transform(mask: np.ndarray, kind: str = "none") -> np.ndarray:
    """Return the class-id mask for ``kind`` (a pure function; ``mask`` is not modified)."""
    mask = np.asarray(mask)
    if kind == "none":
        return mask
    if kind == "foreground":
        return (mask > 0).astype(np.uint8)
    if kind == "boundary_interior":
        labels = mask if np.issubdtype(mask.dtype, np.integer) else mask.astype(np.int64)
        out = (labels > 0).astype(np.uint8) * 2
        out[find_boundaries(labels, mode="inner")] = 1
        return out
    raise BioflowError(f"data.mask_transform: {kind!r} is not allowed; use one of {list(MASK_TRANSFORMS)}")
