"""Post-processing of segmentation predictions: z- and yz-median filtering (BiaPy's
``Z_FILTERING`` / ``YZ_FILTERING``).

* ``z_filter(vol, size)``: median over ``size`` neighbouring slices along z only;
* ``yz_filter(vol, size)``: median over a ``size x size`` window in the z-y plane.

Both take ``(z, y, x)`` label volumes or ``(z, y, x, c)`` probability volumes (channels are
filtered independently). 3D predictions are filtered one volume at a time; 2D predictions are
stacked (sorted by file name) into one ``(z, y, x)`` stack, filtered, and split again, as BiaPy
does for 2D stacks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from bioflow.errors import BioflowError
from bioflow.io import atomic_path

log = logging.getLogger(__name__)


def _size(vol: np.ndarray, per_axis: tuple[int, int, int]) -> tuple[int, ...]:
    if vol.ndim not in (3, 4):
        raise ValueError(f"expected a (z, y, x) or (z, y, x, c) volume, got shape {vol.shape}")
    return per_axis + ((1,) if vol.ndim == 4 else ())


def z_filter(vol: np.ndarray, size: int) -> np.ndarray:
    """Median filter of ``size`` along z only (``size`` <= 1 returns a copy)."""
    if size <= 1:
        return np.array(vol, copy=True)
    return ndimage.median_filter(vol, size=_size(vol, (size, 1, 1)), mode="nearest")


def yz_filter(vol: np.ndarray, size: int) -> np.ndarray:
    """Median filter over a ``size x size`` window in z and y (x untouched)."""
    if size <= 1:
        return np.array(vol, copy=True)
    return ndimage.median_filter(vol, size=_size(vol, (size, size, 1)), mode="nearest")


def apply_filters(vol: np.ndarray, z: int, yz: int) -> np.ndarray:
    """z filter then yz filter, as configured (0 = off)."""
    out = z_filter(vol, z) if z else vol
    out = yz_filter(out, yz) if yz else out
    return out


def _prediction_files(in_dir: Path) -> list[Path]:
    files = sorted(p for p in in_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff") and not p.name.startswith("."))
    if not files:
        raise BioflowError(f"{in_dir}: no predicted TIFFs to post-process; run predict first")
    return files


def run(cfg: dict, in_dir, out_dir) -> list[Path]:
    """Stage postprocess: filter every prediction of ``in_dir`` into ``out_dir`` (same names)."""

    pcfg = cfg["postprocess"]
    z, yz = int(pcfg["z_filter"]), int(pcfg["yz_filter"])
    ndim = int(cfg["experiment"]["ndim"])
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    files = _prediction_files(in_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(path: Path, arr: np.ndarray):
        with atomic_path(out_dir / path.name) as tmp:
            tifffile.imwrite(tmp, arr, compression="zlib")
        written.append(out_dir / path.name)

    if ndim == 3:
        for f in files:
            save(f, apply_filters(tifffile.imread(f), z, yz))
    else:
        slices = [tifffile.imread(f) for f in files]
        shapes = {s.shape for s in slices}
        if len(shapes) > 1 and (z > 1 or yz > 1):
            raise BioflowError(f"postprocess.z_filter / yz_filter: the 2D predictions in {in_dir} have "
                               f"different shapes {sorted(shapes)[:3]}; filtering along z treats 2D "
                               f"images as one stack of equal-size slices; set both to 0")
        stack = apply_filters(np.stack(slices), z, yz) if len(shapes) == 1 else slices
        for f, sl in zip(files, stack):
            save(f, np.asarray(sl))
    log.info("postprocess: z_filter=%d yz_filter=%d on %d files -> %s", z, yz, len(files), out_dir)
    return written
