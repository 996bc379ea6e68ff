"""Read and write images: TIFF (2D, 3D, multi-channel), PNG/JPG, NPY/NPZ and HDF5.

Axis convention (the one used everywhere in memory): ``(y, x, c)`` in 2D and
``(z, y, x, c)`` in 3D -- channels last, always present (``c >= 1``).

:func:`read_image` converts a file to that convention. Where the channel axis sits in the
file is decided by ``channel_axis``:

* ``"last"``: the last axis is channels (when the file has one more axis than ``ndim``).
* ``"first"``: the first axis is channels (``c, y, x`` / ``c, z, y, x``); it is moved last.
* ``"auto"`` (default): a TIFF's own axes metadata (``C`` or ``S`` axis, e.g. ImageJ
  ``ZCYX`` hyperstacks or planar RGB) wins; otherwise a trailing axis equal to ``channels``
  is channels, then a leading axis equal to ``channels`` (channel-first), then, in 3D, axis 1
  (ImageJ ``ZCYX`` order); without ``channels`` a trailing, then a leading axis of size <= 4.

A file whose number of axes cannot be ``ndim`` (+1 for channels), even after dropping
singleton axes, raises :class:`BioflowError` naming the file. A channel count different from
``channels`` is *not* an error here (``validate_dataset`` reports it), except for two
conversions of colour files (interleaved RGB(A), i.e. channel axis last or TIFF samples), so
that mixed grey / colour sets such as DSB2018 are usable: RGBA read with ``channels=3`` loses
its alpha channel, RGB(A) read with ``channels=1`` becomes its luminance (ITU-R 601
weights, alpha dropped, dtype kept), and a grey + alpha PNG read with ``channels=1`` loses
its alpha.

Files holding several arrays are addressed as ``file.h5:dataset`` / ``file.npz:key``;
without a key the first dataset (HDF5, depth-first order) or the first array (NPZ) is read.

Writes keep the dtype and are atomic: data goes to a hidden temporary file in the target
folder which is then renamed over the target (``os.replace``), so a killed job never leaves a
half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import tifffile
from PIL import Image

from bioflow.errors import BioflowError

TIFF_EXTENSIONS = (".tif", ".tiff")
PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
NUMPY_EXTENSIONS = (".npy", ".npz")
HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf")
IMAGE_EXTENSIONS = TIFF_EXTENSIONS + PIL_EXTENSIONS + NUMPY_EXTENSIONS + HDF5_EXTENSIONS

_MULTI_ARRAY = (".npz",) + HDF5_EXTENSIONS
# PIL mode -> (dtype, number of channels or None for a plain 2D array)
_PIL_MODES = {
    "1": ("bool", None), "L": ("uint8", None), "P": ("uint8", None),
    "LA": ("uint8", 2), "PA": ("uint8", 2), "RGB": ("uint8", 3), "YCbCr": ("uint8", 3),
    "RGBA": ("uint8", 4), "RGBX": ("uint8", 4), "CMYK": ("uint8", 4),
    "I": ("int32", None), "F": ("float32", None),
    "I;16": ("uint16", None), "I;16B": ("uint16", None), "I;16L": ("uint16", None),
    "I;16N": ("uint16", None),
}


# --- paths ---------------------------------------------------------------------------

def split_key(path: str | os.PathLike) -> tuple[Path, str | None]:
    """``"a/b.h5:raw/img"`` -> ``(Path("a/b.h5"), "raw/img")``; other paths -> ``(path, None)``."""
    text = os.fspath(path)
    for ext in _MULTI_ARRAY:
        i = text.lower().rfind(ext + ":")
        if i >= 0:
            cut = i + len(ext)
            return Path(text[:cut]), text[cut + 1:] or None
    return Path(text), None


def is_image_file(path: str | os.PathLike) -> bool:
    p = split_key(path)[0]
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files of ``folder`` (by extension), sorted by name; hidden files are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BioflowError(f"{folder}: folder not found; check the data paths in the config")
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and is_image_file(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


# --- reading -------------------------------------------------------------------------

def _fail(path, what: str) -> BioflowError:
    return BioflowError(f"{path}: {what}")


def _read_raw(path: str | os.PathLike) -> tuple[np.ndarray, str | None]:
    """The array stored in the file, as stored, plus TIFF axes letters when known."""
    p, key = split_key(path)
    ext = p.suffix.lower()
    if not p.is_file():
        raise _fail(path, "file not found; check the path")
    try:
        if ext in TIFF_EXTENSIONS:
            with tifffile.TiffFile(p) as tf:
                series = tf.series[0]
                return np.asarray(series.asarray()), series.axes
        if ext in PIL_EXTENSIONS:
            with Image.open(p) as img:
                img.load()  # decodes now, so a truncated file fails here
                return np.asarray(img), None
        if ext == ".npy":
            return np.load(p, allow_pickle=False), None
        if ext == ".npz":
            with np.load(p, allow_pickle=False) as z:
                names = list(z.files)
                if not names:
                    raise _fail(path, "the .npz holds no array")
                if key is not None and key not in names:
                    raise _fail(path, f"no array '{key}' in the .npz; it holds {names}")
                return z[key or names[0]], None
        if ext in HDF5_EXTENSIONS:
            with h5py.File(p, "r") as f:
                name = key or first_dataset(f)
                if name is None or name not in f or not isinstance(f[name], h5py.Dataset):
                    raise _fail(path, f"no dataset '{key}' in the HDF5 file" if key
                                else "the HDF5 file holds no dataset")
                return f[name][()], None
    except BioflowError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder error means a bad file
        raise _fail(path, f"unreadable or truncated image file ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); replace or remove it") from None
    raise _fail(path, f"not an image file (extension '{p.suffix}'); supported: "
                      f"{', '.join(IMAGE_EXTENSIONS)}")


def first_dataset(f) -> str | None:
    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            found.append(name)
            return True  # stop at the first one
        return None

    f.visititems(visit)
    return found[0] if found else None


def _squeeze_to(arr_shape: tuple, axes: str | None, max_ndim: int):
    """Drop singleton axes (leading first) until at most ``max_ndim`` remain.

    Returns the axes to keep (indices) and their letters.
    """
    keep = list(range(len(arr_shape)))
    for i in range(len(arr_shape)):
        if len(keep) <= max_ndim:
            break
        if arr_shape[i] == 1:
            keep.remove(i)
    # then trailing singletons (e.g. a (y, x, 1, 1) array)
    for i in reversed(range(len(arr_shape))):
        if len(keep) <= max_ndim:
            break
        if arr_shape[i] == 1 and i in keep:
            keep.remove(i)
    letters = "".join(axes[i] for i in keep) if axes and len(axes) == len(arr_shape) else None
    return keep, letters


def _channel_axis_of(shape: tuple, ndim: int, channels: int | None, channel_axis,
                     axes: str | None, path) -> int | None:
    """Index of the channel axis in ``shape`` (len ndim or ndim+1), or None if there is none."""
    if len(shape) == ndim:
        if axes and len(axes) == len(shape) and ("C" in axes or "S" in axes):
            raise _fail(path, f"shape {tuple(shape)} (axes {axes}) is a {ndim - 1}D image with "
                              f"channels, but experiment.ndim is {ndim}; set experiment.ndim")
        return None
    if channel_axis in ("last", -1):
        return len(shape) - 1
    if channel_axis in ("first", 0):
        return 0
    if isinstance(channel_axis, int):
        return channel_axis % len(shape)
    if channel_axis != "auto":
        raise BioflowError(f"data.channel_axis: {channel_axis!r} is not allowed; use auto, first or last")
    if axes and len(axes) == len(shape):
        marks = [i for i, a in enumerate(axes) if a in "CS"]
        if len(marks) == 1:
            return marks[0]
    candidates = [len(shape) - 1, 0] + ([1] if ndim == 3 else [])
    if channels is not None:
        for i in candidates:
            if shape[i] == channels:
                return i
        if channels == 3 and shape[-1] == 4:
            return len(shape) - 1  # RGBA read as RGB
    for i in candidates[:2]:
        if shape[i] <= 4:
            return i
    want = f"{channels} channel(s)" if channels else "a small channel axis"
    raise _fail(path, f"shape {tuple(shape)} is not a {ndim}D image with {want}; check "
                      f"experiment.ndim, data.channels and data.channel_axis")


def to_channels_last(arr: np.ndarray, ndim: int = 2, channels: int | None = None,
                     channel_axis: str | int = "auto", axes: str | None = None,
                     path: Any = "<array>", convert: bool = True) -> np.ndarray:
    """Turn an array as stored in a file into ``(z,)y,x,c`` (see the module docstring).

    ``convert=False`` gives the right shape without computing a colour conversion.
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    keep, axes = _squeeze_to(arr.shape, axes, ndim + 1)
    if len(keep) != arr.ndim:
        arr = arr.reshape(tuple(arr.shape[i] for i in keep))
    if arr.ndim < ndim:
        raise _fail(path, f"shape {arr.shape} has fewer than {ndim} axes; experiment.ndim is "
                          f"{ndim} (a {arr.ndim}D file?); check experiment.ndim")
    if arr.ndim > ndim + 1:
        raise _fail(path, f"shape {arr.shape} has too many axes for a {ndim}D image with "
                          f"channels; check experiment.ndim")
    ch = _channel_axis_of(arr.shape, ndim, channels, channel_axis, axes, path)
    if ch is None:
        return arr[..., None]
    colour = ch == arr.ndim - 1 or (axes is not None and axes[ch] == "S")
    arr = np.moveaxis(arr, ch, -1)
    if channels == 3 and arr.shape[-1] == 4 and colour:
        arr = arr[..., :3]
    elif channels == 1 and arr.shape[-1] in (3, 4) and colour:
        arr = to_grey(arr) if convert else arr[..., :1]
    elif channels == 1 and arr.shape[-1] == 2 and colour and ext_is_pil(path):
        arr = arr[..., :1]  # grey + alpha PNG
    return arr


def ext_is_pil(path) -> bool:
    try:
        return split_key(path)[0].suffix.lower() in PIL_EXTENSIONS
    except TypeError:
        return False


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def to_grey(image: np.ndarray) -> np.ndarray:
    """Luminance of an RGB(A) ``(..., 3|4)`` image as ``(..., 1)``, dtype kept (alpha dropped)."""
    grey = image[..., :3].astype(np.float32) @ _LUMA
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        grey = np.clip(np.rint(grey), info.min, info.max)
    return grey.astype(image.dtype)[..., None]


def read_image(path: str | os.PathLike, ndim: int = 2, channels: int | None = None,
               channel_axis: str | int = "auto") -> np.ndarray:
    """Read an image as ``(y, x, c)`` (ndim=2) or ``(z, y, x, c)`` (ndim=3), dtype as stored.

    Raises :class:`BioflowError` naming the file when it is missing, unreadable, truncated,
    not an image, or has a number of axes that cannot be ``ndim`` (+ channels).
    """
    arr, axes = _read_raw(path)
    if split_key(path)[0].suffix.lower() in PIL_EXTENSIONS and ndim == 3:
        raise _fail(path, "PNG/JPG files hold 2D images but experiment.ndim is 3; use TIFF, "
                          "NPY or HDF5 volumes or set experiment.ndim: 2")
    return to_channels_last(np.asarray(arr), ndim, channels, channel_axis, axes, path)


def read_mask(path: str | os.PathLike, ndim: int = 2) -> np.ndarray:
    """Read a label mask as a ``(z,)y,x`` array (a singleton channel axis is dropped).

    The dtype is kept (``validate_dataset`` reports non-integer masks); bool becomes uint8.
    A mask with several channels raises :class:`BioflowError`.
    """
    arr, axes = _read_raw(path)
    keep, _ = _squeeze_to(arr.shape, axes, ndim)
    if len(keep) != arr.ndim:
        arr = arr.reshape(tuple(arr.shape[i] for i in keep))
    if arr.ndim != ndim:
        raise _fail(path, f"mask shape {arr.shape} is not a {ndim}D single-channel label "
                          f"image; masks hold one integer class/instance id per pixel")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def image_info(path: str | os.PathLike, ndim: int = 2, channels: int | None = None,
               channel_axis: str | int = "auto") -> tuple[tuple[int, ...], str]:
    """``(shape in (z,)y,x,c, dtype name)`` without decoding the pixels where the format allows.

    Headers only for TIFF, PNG/JPG, NPY and HDF5 (so a truncated file may pass here; use
    :func:`read_image` to be sure). NPZ members are read.
    """
    p, key = split_key(path)
    ext = p.suffix.lower()
    if not p.is_file():
        raise _fail(path, "file not found; check the path")
    axes = None
    try:
        if ext in TIFF_EXTENSIONS:
            with tifffile.TiffFile(p) as tf:
                s = tf.series[0]
                shape, dtype, axes = tuple(s.shape), np.dtype(s.dtype), s.axes
        elif ext in PIL_EXTENSIONS:
            if ndim == 3:
                raise _fail(path, "PNG/JPG files hold 2D images but experiment.ndim is 3")
            with Image.open(p) as img:
                if img.mode not in _PIL_MODES:
                    raise _fail(path, f"unsupported PNG/JPG mode {img.mode}")
                dt, c = _PIL_MODES[img.mode]
                shape = (img.height, img.width) + ((c,) if c else ())
                dtype = np.dtype(dt)
        elif ext == ".npy":
            a = np.load(p, mmap_mode="r", allow_pickle=False)
            shape, dtype = tuple(a.shape), a.dtype
            del a
        elif ext in HDF5_EXTENSIONS:
            with h5py.File(p, "r") as f:
                name = key or first_dataset(f)
                if name is None or name not in f:
                    raise _fail(path, "no such dataset in the HDF5 file")
                shape, dtype = tuple(f[name].shape), f[name].dtype
        else:
            a, axes = _read_raw(path)
            shape, dtype = a.shape, a.dtype
    except BioflowError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _fail(path, f"unreadable image file ({type(exc).__name__}: {exc}); replace or "
                          f"remove it") from None
    # shape bookkeeping without data: reuse the same conversion on a zero-strided array
    dummy = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=shape,
                                            strides=(0,) * len(shape))
    out = to_channels_last(dummy, ndim, channels, channel_axis, axes, path, convert=False)
    return tuple(int(s) for s in out.shape), dtype.name


# --- writing -------------------------------------------------------------------------

class AtomicFile:
    """A write to ``path`` through a hidden temporary sibling ``tmp``: :meth:`commit` renames it
    over ``path``, :meth:`discard` removes it. The one atomic-write mechanism of bioflow;
    :func:`atomic_path` is its context-manager form, this class serves writes that span calls
    (a memmapped output filled tile row by tile row).

    The temporary name keeps the suffix (writers that pick a format by extension work) and
    starts with a dot (folder listings skip it).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.{uuid.uuid4().hex[:8]}.tmp{self.path.suffix}")

    def commit(self) -> Path:
        if not self.tmp.exists():
            raise FileNotFoundError(f"{self.tmp}: nothing was written to the temporary path")
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        _remove(self.tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path next to ``path``; rename it over ``path`` on success.

    On an exception it is removed and nothing is left at ``path``'s place; an existing
    ``path`` is left untouched. Works for folders too when ``path`` does not exist yet.
    """
    f = AtomicFile(path)
    try:
        yield f.tmp
        f.commit()
    except BaseException:
        f.discard()
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary folder next to ``path``; swap it in for ``path`` on success.

    An existing ``path`` is moved aside, the new folder renamed into place, then the old one
    deleted (two renames: a killed job leaves either the old or the new tree, plus at most a
    hidden leftover). On an exception the temporary folder is removed and ``path`` kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        with contextlib.suppress(OSError):
            p.unlink()


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, os.PathLike)):
        return os.fspath(o)
    if isinstance(o, np.dtype):
        return o.name
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def write_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> Path:
    """Write ``obj`` as JSON atomically (numpy scalars/arrays and paths are converted)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, default=_json_default, allow_nan=True)
            f.write("\n")
    return path


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise BioflowError(f"{path}: file not found; run the stage that writes it first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BioflowError(f"{path}: not valid JSON ({exc}); delete it and rerun") from None


def write_image(path: str | os.PathLike, array: np.ndarray, channels_last: bool = True,
                compression: str | None = None) -> Path:
    """Write ``array`` (``(z,)y,x,c`` or plain ``(z,)y,x``) by suffix, keeping its dtype.

    TIFF: channels > 1 are stored with shaped metadata (axes ``YXC`` / ``ZYXC``) so reading
    gives the same array back; a single channel is written without its channel axis (what
    ImageJ / napari expect). PNG/JPG: 2D uint8 (1, 3 or 4 channels) or uint16 (1 channel).
    NPY/NPZ/HDF5: the array as given (``file.h5:name`` / ``file.npz:name`` picks the name,
    default ``image``). ``channels_last=False`` means ``array`` has no channel axis (a mask).
    ``compression``: TIFF ``"zlib"``/``"zstd"``..., HDF5 ``"gzip"``/``"lzf"``.
    """
    arr = np.asarray(array)
    p, key = split_key(path)
    ext = p.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise BioflowError(f"{path}: cannot write extension '{p.suffix}'; use one of "
                           f"{', '.join(IMAGE_EXTENSIONS)}")
    if arr.dtype == bool and ext not in NUMPY_EXTENSIONS + HDF5_EXTENSIONS:
        arr = arr.astype(np.uint8)
    squeezed = arr[..., 0] if channels_last and arr.ndim >= 3 and arr.shape[-1] == 1 else arr
    with atomic_path(p) as tmp:
        if ext in TIFF_EXTENSIONS:
            kw = {"compression": compression} if compression else {}
            if channels_last and squeezed.ndim == arr.ndim and arr.ndim >= 3:
                axes = ("ZYXC" if arr.ndim == 4 else "YXC")
                tifffile.imwrite(tmp, arr, photometric="minisblack", metadata={"axes": axes}, **kw)
            else:
                tifffile.imwrite(tmp, squeezed, photometric="minisblack", **kw)
        elif ext in PIL_EXTENSIONS:
            _write_pil(tmp, squeezed, path)
        elif ext == ".npy":
            np.save(tmp, arr, allow_pickle=False)
        elif ext == ".npz":
            np.savez_compressed(tmp, **{key or "image": arr})
        else:
            with h5py.File(tmp, "w") as f:
                f.create_dataset(key or "image", data=arr, compression=compression)
    return p


def _write_pil(tmp: Path, arr: np.ndarray, path) -> None:
    ok = (arr.ndim == 2 and arr.dtype in (np.uint8, np.uint16)) or \
         (arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8)
    if not ok:
        raise BioflowError(f"{path}: PNG/JPG hold 2D uint8 (1, 3 or 4 channels) or uint16 "
                           f"(1 channel) images, got shape {arr.shape} dtype {arr.dtype}; "
                           f"write a .tif instead")
    if tmp.suffix.lower() in (".jpg", ".jpeg") and arr.dtype != np.uint8:
        raise BioflowError(f"{path}: JPG holds uint8 only; write a .png or .tif")
    Image.fromarray(arr).save(tmp)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
