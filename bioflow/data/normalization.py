"""Stage ``norm_stats`` and the :func:`normalize` function shared by training and inference.

One path: training images (the patches are cut from them), validation images and test images
(in memory or streamed in row chunks) all go through :func:`normalize_with` with statistics
that are either the train set's (``per_image: false``: ``normalization.json``, carried in the
checkpoint) or the image's own from :func:`image_stats` (``per_image: true``), which gives the
same numbers whether it sees the image whole or chunk by chunk.

Statistics are computed over the **train split only** (as listed in the manifest), per
channel: exact mean / std / min / max over every pixel (merged per image with Chan's
parallel formula, in float64), and percentiles from a bounded random sample of pixels.

Cost bound (documented because large 3D sets would otherwise be slow):

* at most ``MAX_IMAGES`` train images are read (a seeded random subset beyond that);
* at most ``SAMPLE_BUDGET`` pixels per channel are kept for the percentiles, spread evenly
  over the images (at least ``MIN_PER_IMAGE`` per image), drawn with ``numpy``'s
  ``default_rng(SEED)`` so reruns give identical statistics.

The JSON holds::

    {"channels": C, "dtype": "uint8", "dtype_max": 255.0 | null,
     "mean": [C], "std": [C], "min": [C], "max": [C],
     "percentiles": [lo, hi], "percentile_low": [C], "percentile_high": [C],
     "n_images": n, "n_pixels": N, "n_sampled": S, "seed": 0, "type": ..., "per_image": ...}

and ``norm_mean.npy`` / ``norm_std.npy`` hold ``mean`` / ``std`` as float32 arrays of shape
``(C,)`` (what BiaPy users expect to find).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from bioflow.config_model import Normalization
from bioflow.data.manifest import load_manifest, read_entry_image
from bioflow.errors import BioflowError
from bioflow.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

MAX_IMAGES = 5000
SAMPLE_BUDGET = 2_000_000
MIN_PER_IMAGE = 256
SEED = 0
_EPS = 1e-8
TYPES = ("zscore", "percentile", "scale_range", "none")


def _norm_cfg(norm_cfg: dict | None) -> dict:
    """Accept ``cfg``, ``cfg["data"]`` or ``cfg["data"]["normalization"]``; fill defaults."""
    norm_cfg = dict(norm_cfg or {})
    if "data" in norm_cfg:
        norm_cfg = dict(norm_cfg["data"]["normalization"])
    elif "normalization" in norm_cfg:
        norm_cfg = dict(norm_cfg["normalization"] or {})
    out = Normalization().model_dump()  # the schema's defaults, for a partial section
    out.update(norm_cfg)
    if out["type"] not in TYPES:
        raise BioflowError(f"data.normalization.type: {out['type']!r} is not allowed; "
                           f"use one of {list(TYPES)}")
    lo, hi = out["percentiles"]
    if not 0 <= lo < hi <= 100:
        raise BioflowError(f"data.normalization.percentiles: {out['percentiles']} must be "
                           f"[low, high] with 0 <= low < high <= 100")
    return out


# --- the pure function ---------------------------------------------------------------

def _countable(dtype: np.dtype) -> bool:
    """Integer images of at most 16 bits (and bool): percentiles come from a histogram."""
    return dtype == bool or (dtype.kind in "iu" and dtype.itemsize <= 2)


def _histogram(values: np.ndarray) -> np.ndarray:
    """Counts of every value of a 1D countable array, index 0 = the dtype's minimum."""
    v = values.view(np.uint8) if values.dtype == bool else values
    base = int(np.iinfo(v.dtype).min)
    return np.bincount((v.astype(np.int32) - base) if base else v.ravel())


def _quantiles(counts: np.ndarray, dtype: np.dtype, q) -> np.ndarray:
    """``np.percentile``'s linear interpolation read from a histogram of ``sum(counts)`` values."""
    n = int(counts.sum())
    base = 0 if dtype == bool else int(np.iinfo(dtype).min)
    pos = np.asarray(q, dtype=np.float64) / 100.0 * (n - 1)
    below = np.floor(pos)
    t = pos - below
    ranks = np.stack([below, np.minimum(below + 1, n - 1)]).astype(np.int64)
    a, b = np.searchsorted(np.cumsum(counts), ranks, side="right").astype(np.float64) + base
    # numpy's linear interpolation, in its form for each side of t = 0.5
    return np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)


def percentiles(image: np.ndarray, q) -> np.ndarray:
    """Per-channel percentiles ``q`` of a ``(..., c)`` image, ``(len(q), c)`` float64, equal to
    ``np.percentile(image.reshape(-1, c), q, axis=0)`` (linear interpolation). Images of at
    most 16-bit integers (the usual microscopy data) take them from a histogram: one counting
    pass instead of a selection over every pixel (10-20x faster, see benchmarks/RESULTS.md)."""
    img = np.asarray(image)
    c = img.shape[-1]
    flat = img.reshape(-1, c)
    if not _countable(img.dtype) or flat.shape[0] == 0:
        return np.asarray(np.percentile(flat, list(q), axis=0), dtype=np.float64).reshape(len(q), c)
    return np.stack([_quantiles(_histogram(flat[:, ch]), img.dtype, q) for ch in range(c)], axis=1)


# --- the statistics of one image (per_image: true) ---------------------------------------

FLOAT_SAMPLE = 1 << 24  # values per channel kept for the percentiles of one float image
_HASH = np.uint64(2654435761)  # Knuth's multiplicative hash: picks voxels evenly, no aliasing


class ImageStats:
    """Per-channel statistics of ONE image fed as row chunks of its first axis, in order
    (:meth:`add`), or whole: what :func:`normalize` takes with ``per_image: true``, the same
    numbers however the image is cut. Mean / std merged exactly (Chan et al.); max |x|;
    percentiles exact from a histogram for images of at most 16-bit integers, else from the
    float32 values of every voxel, or, in images of more than ``FLOAT_SAMPLE`` voxels, of those
    a hash of their index picks (so the chunking does not change the pick).
    ``n_voxels``: the image's voxel count per channel (needed to pick voxels of a large float
    image chunk by chunk)."""

    def __init__(self, norm_cfg: dict | None, n_voxels: int):
        self.ncfg = _norm_cfg(norm_cfg)
        self.kind = self.ncfg["type"]
        self.n_voxels = int(n_voxels)
        self.offset = 0                # voxels seen so far
        self.dtype = None
        self.mean = self.m2 = self.amax = None
        self.counts: list[np.ndarray] = []
        self.samples: list[np.ndarray] = []

    @property
    def needed(self) -> bool:
        """False where ``normalize`` uses no statistics of the image (after the first chunk)."""
        return self.kind != "none" and not (self.kind == "scale_range" and self.dtype is not None
                                            and self.dtype.kind in "biu")

    def add(self, chunk: np.ndarray) -> "ImageStats":
        img = np.asarray(chunk)
        c = img.shape[-1]
        if self.dtype is None:
            self.dtype = img.dtype
        elif img.dtype != self.dtype:
            raise ValueError(f"chunks of one image with dtypes {self.dtype} and {img.dtype}")
        flat = img.reshape(-1, c)
        k = flat.shape[0]
        if k == 0 or not self.needed:
            self.offset += k
            return self
        if self.kind == "zscore":
            x = flat.astype(np.float32).astype(np.float64)
            m_i = x.mean(axis=0)
            m2_i = ((x - m_i) ** 2).sum(axis=0)
            if self.mean is None:
                self.mean, self.m2 = m_i, m2_i
            else:
                n = self.offset + k
                delta = m_i - self.mean
                self.mean = self.mean + delta * (k / n)
                self.m2 = self.m2 + m2_i + delta ** 2 * (self.offset * k / n)
        elif self.kind == "scale_range":
            a = np.abs(flat.astype(np.float32)).max(axis=0)
            self.amax = a if self.amax is None else np.maximum(self.amax, a)
        elif _countable(img.dtype):
            for ch in range(c):
                h = _histogram(flat[:, ch])
                if ch < len(self.counts):
                    size = max(len(h), len(self.counts[ch]))
                    self.counts[ch] = np.pad(self.counts[ch], (0, size - len(self.counts[ch]))) + \
                        np.pad(h, (0, size - len(h)))
                else:
                    self.counts.append(h)
        else:
            x = flat.astype(np.float32)
            if self.n_voxels > FLOAT_SAMPLE:
                idx = np.arange(self.offset, self.offset + k, dtype=np.uint64)
                keep = (idx * _HASH) & np.uint64(0xFFFFFFFF) < np.uint64(FLOAT_SAMPLE * 2**32 // self.n_voxels)
                x = x[keep]
            self.samples.append(x)
        self.offset += k
        return self

    def result(self) -> dict:
        """Statistics in the keys of ``normalization.json`` that :func:`normalize_with` reads."""
        if self.offset != self.n_voxels:
            raise ValueError(f"image statistics: {self.offset} voxels added of {self.n_voxels}")
        out = {"per_image": True, "n_pixels": self.offset}
        if self.mean is not None:
            out.update(mean=self.mean.tolist(), std=np.sqrt(self.m2 / max(self.offset, 1)).tolist())
        if self.amax is not None:
            out["max"] = self.amax.astype(np.float64).tolist()
        q = [float(v) for v in self.ncfg["percentiles"]]
        if self.counts or self.samples:
            pct = (np.stack([_quantiles(h, self.dtype, q) for h in self.counts], axis=1) if self.counts else
                   np.asarray(np.percentile(np.concatenate(self.samples), q, axis=0), dtype=np.float64))
            out.update(percentiles=q, percentile_low=pct[0].tolist(), percentile_high=pct[1].tolist())
        return out


def image_stats(image, norm_cfg: dict | None, n_voxels: int | None = None) -> dict:
    """The statistics of one image that :func:`normalize` applies with ``per_image: true``:
    ``image`` a ``(z,)y,x,c`` array, or an iterable of its row chunks in order (a streamed
    image: ``n_voxels`` = its voxel count per channel then). Equal for any chunking."""
    if isinstance(image, np.ndarray):
        return ImageStats(norm_cfg, int(np.prod(image.shape[:-1]))).add(image).result()
    if n_voxels is None:
        raise ValueError("image_stats of row chunks needs n_voxels")
    acc = ImageStats(norm_cfg, n_voxels)
    for chunk in image:
        acc.add(chunk)
        if not acc.needed:
            acc.offset = acc.n_voxels  # nothing to compute: the rest need not be read
            break
    return acc.result()


def _per_channel(values, c: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 1 and c > 1:
        arr = np.repeat(arr, c)
    if arr.size != c:
        raise BioflowError(f"normalization statistics: '{name}' has {arr.size} values but the "
                           f"image has {c} channel(s); rerun norm_stats for this data")
    return arr


def _need(stats: dict | None, key: str, kind: str) -> dict:
    if not stats or key not in stats:
        raise BioflowError(f"data.normalization: type {kind} with per_image: false needs the "
                           f"train-set statistics (normalization.json, key '{key}'); run "
                           f"norm_stats or set per_image: true")
    return stats


def normalize(image: np.ndarray, stats: dict | None, norm_cfg: dict | None) -> np.ndarray:
    """Normalize a ``(z,)y,x,c`` image to float32, per channel.

    ``norm_cfg`` is ``data.normalization`` (or the whole cfg). Types:

    * ``zscore``: ``(x - mean) / std``;
    * ``percentile``: clip to the ``percentiles`` values, then scale to [0, 1];
    * ``scale_range``: integer images are divided by their dtype's max (255, 65535, ...),
      float images by the observed max (train set, or the image's own with ``per_image``);
    * ``none``: a float32 copy.

    ``per_image: true`` uses the statistics of ``image`` itself (:func:`image_stats`) instead
    of ``stats`` (which may then be None). Call it on the image in its stored dtype (before any
    float cast).
    """
    ncfg = _norm_cfg(norm_cfg)
    img = np.asarray(image)
    if img.ndim < 3:
        raise ValueError(f"normalize expects a (z,)y,x,c image, got shape {img.shape}")
    if ncfg["per_image"]:
        stats = image_stats(img, ncfg)
    return normalize_with(img, stats, ncfg)


def normalize_with(image: np.ndarray, stats: dict | None, norm_cfg: dict | None) -> np.ndarray:
    """:func:`normalize` with these statistics, whatever ``per_image`` says: the one place the
    arithmetic happens, for a whole image or one row chunk of it (``stats`` then from
    :func:`image_stats` of the whole image, or the train set's)."""
    ncfg = _norm_cfg(norm_cfg)
    kind = ncfg["type"]
    img = np.asarray(image)
    if img.ndim < 3:
        raise ValueError(f"normalize expects a (z,)y,x,c image, got shape {img.shape}")
    c = img.shape[-1]
    x = img.astype(np.float32, copy=True)
    if kind == "none":
        return x
    if kind == "zscore":
        _need(stats, "mean", kind)
        mean, std = _per_channel(stats["mean"], c, "mean"), _per_channel(stats["std"], c, "std")
        std = np.where(std > _EPS, std, 1.0)
        x -= mean.astype(np.float32)
        x /= std.astype(np.float32)
        return x
    if kind == "percentile":
        lo_p, hi_p = ncfg["percentiles"]
        _need(stats, "percentile_low", kind)
        if [float(v) for v in stats.get("percentiles", [])] != [float(lo_p), float(hi_p)]:
            raise BioflowError(f"data.normalization.percentiles: {ncfg['percentiles']} differ "
                               f"from those of the statistics {stats.get('percentiles')}; "
                               f"rerun norm_stats")
        lo = _per_channel(stats["percentile_low"], c, "percentile_low").astype(np.float32)
        hi = _per_channel(stats["percentile_high"], c, "percentile_high").astype(np.float32)
        span = np.where(hi - lo > _EPS, hi - lo, 1.0).astype(np.float32)
        np.clip(x, lo, hi, out=x)
        x -= lo
        x /= span
        return x
    # scale_range
    if np.issubdtype(img.dtype, np.integer):
        scale = np.full(c, float(np.iinfo(img.dtype).max))
    elif img.dtype == bool:
        scale = np.ones(c)
    else:
        _need(stats, "max", kind)
        scale = np.abs(_per_channel(stats["max"], c, "max"))
    scale = np.where(scale > _EPS, scale, 1.0).astype(np.float32)
    x /= scale
    return x


# --- statistics ----------------------------------------------------------------------

def compute_stats(images: Iterable[np.ndarray], percentiles=(1.0, 99.8), n_images: int | None = None,
                  sample_budget: int = SAMPLE_BUDGET, seed: int = SEED) -> dict:
    """Per-channel statistics over ``images`` (each ``(z,)y,x,c``); see the module docstring.

    ``n_images`` (if known) spreads the percentile sample evenly over the images.
    """
    rng = np.random.default_rng(seed)
    per_image = max(MIN_PER_IMAGE, sample_budget // max(1, n_images or 1))
    count, mean, m2 = 0, None, None
    vmin = vmax = None
    samples: list[np.ndarray] = []
    dtypes: set[str] = set()
    c = None
    n = 0
    for img in images:
        img = np.asarray(img)
        if c is None:
            c = img.shape[-1]
        elif img.shape[-1] != c:
            raise BioflowError(f"norm_stats: images have {c} and {img.shape[-1]} channels; "
                               f"run validate_dataset first")
        dtypes.add(img.dtype.name)
        flat = img.reshape(-1, c)
        k = flat.shape[0]
        f64 = flat.astype(np.float64)
        m_i = f64.mean(axis=0)
        m2_i = ((f64 - m_i) ** 2).sum(axis=0)
        if mean is None:
            count, mean, m2 = k, m_i, m2_i
            vmin, vmax = f64.min(axis=0), f64.max(axis=0)
        else:  # Chan et al. pairwise merge: exact and numerically stable
            tot = count + k
            delta = m_i - mean
            mean = mean + delta * (k / tot)
            m2 = m2 + m2_i + delta ** 2 * (count * k / tot)
            count = tot
            vmin, vmax = np.minimum(vmin, f64.min(axis=0)), np.maximum(vmax, f64.max(axis=0))
        take = min(k, per_image)
        idx = rng.choice(k, size=take, replace=False) if take < k else slice(None)
        samples.append(f64[idx].astype(np.float32))
        n += 1
    if n == 0:
        raise BioflowError("norm_stats: no training images in the manifest; check data.train")
    pooled = np.concatenate(samples, axis=0)
    lo, hi = np.percentile(pooled, list(percentiles), axis=0)
    dtype = sorted(dtypes)[0] if len(dtypes) == 1 else "mixed"
    dmax = float(np.iinfo(dtype).max) if dtype != "mixed" and np.issubdtype(np.dtype(dtype), np.integer) else None
    return {"channels": int(c), "dtype": dtype, "dtype_max": dmax,
            "mean": mean.tolist(), "std": np.sqrt(m2 / max(count, 1)).tolist(),
            "min": vmin.tolist(), "max": vmax.tolist(),
            "percentiles": [float(p) for p in percentiles],
            "percentile_low": np.atleast_1d(lo).tolist(), "percentile_high": np.atleast_1d(hi).tolist(),
            "n_images": n, "n_pixels": int(count), "n_sampled": int(pooled.shape[0]), "seed": seed}


def run(cfg: dict, manifest_path, json_path, mean_npy, std_npy) -> dict:
    """Stage norm_stats: statistics of the manifest's train split -> JSON + mean/std ``.npy``."""

    ncfg = _norm_cfg(cfg)
    manifest = load_manifest(manifest_path)
    entries = list(manifest["splits"].get("train", []))
    if not entries:
        raise BioflowError(f"{manifest_path}: no train images; check data.train")
    if len(entries) > MAX_IMAGES:
        pick = np.sort(np.random.default_rng(SEED).choice(len(entries), MAX_IMAGES, replace=False))
        entries = [entries[i] for i in pick]
    images = (read_entry_image(manifest, e) for e in entries)
    stats = compute_stats(images, ncfg["percentiles"], n_images=len(entries))
    stats.update({"type": ncfg["type"], "per_image": bool(ncfg["per_image"]),
                  "n_train_images": len(manifest["splits"]["train"]),
                  "manifest": str(Path(manifest_path).resolve())})
    write_json(json_path, stats)
    for path, key in ((mean_npy, "mean"), (std_npy, "std")):
        with atomic_path(path) as tmp:
            np.save(tmp, np.asarray(stats[key], dtype=np.float32))
    log.info("norm_stats: %d train images, mean %s, std %s", stats["n_images"],
             np.round(stats["mean"], 4).tolist(), np.round(stats["std"], 4).tolist())
    return stats


def load_stats(json_path) -> dict:
    """Read ``normalization.json`` (BioflowError naming the file if absent or broken)."""
    stats = read_json(json_path)
    if not isinstance(stats, dict) or "mean" not in stats:
        raise BioflowError(f"{json_path}: not a bioflow normalization file; rerun norm_stats")
    return stats
