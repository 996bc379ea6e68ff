"""Chunked I/O for images larger than ``inference.memory_budget_mb``.

Reading: :func:`open_rows` gives an object whose ``read(a, b)`` returns rows ``[a, b)`` of the
first spatial axis (channels last) without decoding the rest of the file:

* uncompressed TIFF: ``tifffile.memmap`` (the OS pages in only what is sliced);
* compressed multi-page TIFF (3D stacks): page by page (``TiffFile.pages[i]``);
* HDF5 (``file.h5:dataset``) and ``.npy``: ``h5py`` slicing / ``np.load(mmap_mode='r')``.

Anything else (a compressed single-page 2D TIFF, PNG, channel-first layouts) cannot be read
in parts and is read whole (logged).

Writing: :func:`output_memmap` creates an uncompressed TIFF on disk (``tifffile.memmap``) under
a temporary name that :func:`finish_output` renames into place, so a killed job leaves nothing
half-written and the output never has to fit in memory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import tifffile

from bioflow.io import AtomicFile, first_dataset, image_info, read_image, split_key

log = logging.getLogger(__name__)


class RowSource:
    """Rows of an image along its first spatial axis, channels last: ``read(a, b)``."""

    def __init__(self, shape, dtype, reader, streamed: bool, close=None):
        self.shape = tuple(shape)      # (*spatial, c) channels last
        self.dtype = np.dtype(dtype)
        self._reader = reader
        self.streamed = streamed
        self._close = close

    def read(self, a: int, b: int) -> np.ndarray:
        out = self._reader(a, b)
        return out.reshape((b - a,) + self.shape[1:])

    def close(self):
        if self._close:
            self._close()
            self._close = None


def _as_rows(raw_shape, shape_cl):
    """How the stored array maps to channels-last rows: 'plain' (no channel axis, c == 1),
    'last' (channels already last) or None (needs a full read)."""
    raw_shape, shape_cl = tuple(raw_shape), tuple(shape_cl)
    if raw_shape == shape_cl[:-1] and shape_cl[-1] == 1:
        return "plain"
    if raw_shape == shape_cl:
        return "last"
    return None


def open_rows(path, ndim: int, channels: int | None, channel_axis="auto") -> RowSource:
    """Open ``path`` for row-wise reading (see the module docstring)."""

    shape, dtype = image_info(path, ndim, channels, channel_axis)
    p, key = split_key(path)
    ext = p.suffix.lower()
    raw = None
    close = None
    try:
        if ext in (".tif", ".tiff"):
            try:
                raw = tifffile.memmap(p, mode="r")
            except (ValueError, TypeError, OSError):
                raw = None
            if raw is None:
                tf = tifffile.TiffFile(p)
                pages = tf.pages
                if len(pages) > 1 and len(pages) == shape[0] and _as_rows((len(pages),) + pages[0].shape, shape):
                    def read_pages(a, b, pages=pages):
                        return np.stack([pages[i].asarray() for i in range(a, b)])
                    return RowSource(shape, dtype, read_pages, True, tf.close)
                tf.close()
        elif ext == ".npy":
            raw = np.load(p, mmap_mode="r", allow_pickle=False)
        elif ext in (".h5", ".hdf5", ".hdf"):
            f = h5py.File(p, "r")
            raw = f[key or first_dataset(f)]
            close = f.close
    except Exception as exc:  # noqa: BLE001 - fall back to a full read below
        log.warning("%s: cannot open for chunked reading (%s); reading it whole", path, exc)
        raw = None
    layout = _as_rows(raw.shape, shape) if raw is not None else None
    if raw is not None and layout is not None:
        return RowSource(shape, dtype, lambda a, b: np.asarray(raw[a:b]), True, close)
    if close:
        close()
    log.info("%s: layout cannot be read in parts; reading it whole", path)
    full = read_image(path, ndim, channels, channel_axis)
    return RowSource(full.shape, full.dtype, lambda a, b: full[a:b], False)


def output_memmap(path, shape, dtype) -> tuple[np.memmap, AtomicFile]:
    """An uncompressed TIFF created on disk at a temporary name next to ``path``: the memmap and
    the pending write, for :func:`finish_output` or :func:`abort_output`."""
    pending = AtomicFile(path)
    mm = tifffile.memmap(pending.tmp, shape=tuple(shape), dtype=np.dtype(dtype), photometric="minisblack")
    return mm, pending


def finish_output(mm: np.memmap, pending: AtomicFile) -> Path:
    """Flush the memmap and rename it into place (atomic)."""
    mm.flush()
    del mm
    return pending.commit()


def abort_output(pending: AtomicFile) -> None:
    pending.discard()
