"""Chunked I/O for images larger than ``inference.memory_budget_mb``.

Reading: :func:`open_rows` gives an object whose ``read(a, b)`` returns rows ``[a, b)`` of the
first spatial axis (channels last) without decoding the rest of the file:

* uncompressed TIFF and C-ordered ``.npy``: the rows' bytes read with ``os.preadv`` into a
  fresh array (no memory map: the pages of a mapped file count in the process's resident set
  for as long as the map lives, so a memmap of a volume larger than the budget grows the
  resident set to the volume's size; read pages stay in the kernel's page cache instead);
* compressed multi-page TIFF (3D stacks): page by page (``TiffFile.pages[i]``);
* HDF5 (``file.h5:dataset``): ``h5py`` slicing.

Anything else (a compressed single-page 2D TIFF, PNG, channel-first layouts) cannot be read
in parts and is read whole (logged).

Writing: :class:`RowSink` creates an uncompressed TIFF on disk under a temporary name and
writes finished rows into it with ``os.pwrite`` (again no memory map); :meth:`RowSink.commit`
renames it into place, so a killed job leaves nothing half-written and the output never has to
fit in memory.
"""

from __future__ import annotations

import logging
import os
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


def _pread(fd: int, shape, dtype, offset: int) -> np.ndarray:
    """``shape`` elements of ``dtype`` at byte ``offset`` of ``fd``, read into a new array."""
    out = np.empty(shape, dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"unexpected end of file at byte {offset + done}")
        done += n
    return out


def _contiguous(p: Path, ext: str):
    """``(raw shape, dtype, byte offset)`` of an uncompressed TIFF series or a C-ordered ``.npy``
    stored as one contiguous block, else None."""
    if ext in (".tif", ".tiff"):
        with tifffile.TiffFile(p) as tf:
            s = tf.series[0]
            off = s.dataoffset  # None unless uncompressed and contiguous
            return None if off is None else (tuple(s.shape), np.dtype(s.dtype).newbyteorder(tf.byteorder), off)
    with open(p, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            return None
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        return None if fortran or dtype.hasobject else (tuple(shape), dtype, f.tell())


def open_rows(path, ndim: int, channels: int | None, channel_axis="auto") -> RowSource:
    """Open ``path`` for row-wise reading (see the module docstring)."""

    shape, dtype = image_info(path, ndim, channels, channel_axis)
    p, key = split_key(path)
    ext = p.suffix.lower()
    try:
        if ext in (".tif", ".tiff", ".npy"):
            found = _contiguous(p, ext)
            if found is not None and _as_rows(found[0], shape):
                raw_shape, raw_dtype, off = found
                row_bytes = int(np.prod(raw_shape[1:], dtype=np.int64)) * raw_dtype.itemsize
                fd = os.open(p, os.O_RDONLY)

                def read_bytes(a, b):
                    rows = _pread(fd, (b - a,) + raw_shape[1:], raw_dtype, off + a * row_bytes)
                    return rows if raw_dtype.isnative else rows.astype(raw_dtype.newbyteorder("="))
                return RowSource(shape, dtype, read_bytes, True, lambda: os.close(fd))
        if ext in (".tif", ".tiff"):
            tf = tifffile.TiffFile(p)
            pages = tf.pages
            if len(pages) > 1 and len(pages) == shape[0] and _as_rows((len(pages),) + pages[0].shape, shape):
                def read_pages(a, b, pages=pages):
                    return np.stack([pages[i].asarray() for i in range(a, b)])
                return RowSource(shape, dtype, read_pages, True, tf.close)
            tf.close()
        elif ext in (".h5", ".hdf5", ".hdf"):
            f = h5py.File(p, "r")
            raw = f[key or first_dataset(f)]
            if _as_rows(raw.shape, shape):
                return RowSource(shape, dtype, lambda a, b: np.asarray(raw[a:b]), True, f.close)
            f.close()
    except Exception as exc:  # noqa: BLE001 - fall back to a full read below
        log.warning("%s: cannot open for chunked reading (%s); reading it whole", path, exc)
    log.info("%s: layout cannot be read in parts; reading it whole", path)
    full = read_image(path, ndim, channels, channel_axis)
    return RowSource(full.shape, full.dtype, lambda a, b: full[a:b], False)


class RowSink:
    """An uncompressed TIFF of ``shape`` / ``dtype`` created at a temporary name next to
    ``path``, written row block by row block (first axis) with ``os.pwrite``: nothing of it
    stays in the process's memory. :meth:`commit` renames it into place, :meth:`discard`
    removes it."""

    def __init__(self, path, shape, dtype):
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        self.pending = AtomicFile(path)
        # tifffile writes the header and reserves the (contiguous) data block without data
        off, _ = tifffile.imwrite(self.pending.tmp, shape=self.shape, dtype=self.dtype,
                                  photometric="minisblack", returnoffset=True)
        self._off = int(off)
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(self.pending.tmp, os.O_WRONLY)

    def write(self, a: int, rows: np.ndarray) -> None:
        buf = memoryview(np.ascontiguousarray(rows, dtype=self.dtype).reshape(-1).view(np.uint8))
        done, off = 0, self._off + a * self._row_bytes
        while done < len(buf):
            done += os.pwrite(self._fd, buf[done:], off + done)

    def _close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def commit(self) -> Path:
        self._close()
        return self.pending.commit()

    def discard(self) -> None:
        self._close()
        self.pending.discard()
