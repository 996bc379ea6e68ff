"""Classification datasets and the Lightning datamodule, read from the manifest.

Per image: read (``(z,)y,x,c``) -> normalize (``bioflow.data.normalization.normalize``) ->
fit to ``data.patch_size`` -> ``(C, *spatial)`` float32 -> augment (train only).

Size policy (``data.resize``) for images whose size differs from ``patch_size``:

* ``resize``: linear interpolation of every spatial axis to ``patch_size`` (aspect ratio
  not kept; antialiased when shrinking 2D images);
* ``crop_pad``: centre crop where larger, zero padding (the normalized mean for z-score)
  where smaller; pixel size is kept.

Preprocessed images are cached in memory once per process (a module-level cache, bounded by
``BIOFLOW_CACHE_MB``, default 4096, which DataLoader workers split), so small sets such as MedMNIST are read and
normalized once for training and prediction alike.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from bioflow.data.augment import augment
from bioflow.data.loader import loader_kwargs
from bioflow.data.manifest import read_entry_image
from bioflow.data.normalization import normalize
from bioflow.errors import BioflowError

log = logging.getLogger(__name__)

_CACHE: dict[tuple, np.ndarray] = {}
_CACHE_BYTES = [0]


def _cache_budget() -> int:
    """This process's share of ``BIOFLOW_CACHE_MB``: each DataLoader worker holds its own cache,
    so the workers split the budget (on a GPU node ``num_workers: auto`` starts up to 8)."""
    info = torch.utils.data.get_worker_info()
    return int(float(os.environ.get("BIOFLOW_CACHE_MB", 4096)) * 2 ** 20) // (info.num_workers if info else 1)


def clear_cache() -> None:
    _CACHE.clear()
    _CACHE_BYTES[0] = 0


# --- pure preprocessing ----------------------------------------------------------------------

def fit_to_size(image: np.ndarray, size: Sequence[int], mode: str = "resize") -> np.ndarray:
    """``(C, *spatial)`` -> ``(C, *size)`` by ``resize`` (interpolation) or ``crop_pad``."""
    size = tuple(int(s) for s in size)
    spatial = tuple(image.shape[1:])
    if len(size) != len(spatial):
        raise BioflowError(f"data.patch_size: {list(size)} has {len(size)} values for "
                           f"{len(spatial)}D images; check experiment.ndim")
    if spatial == size:
        return np.ascontiguousarray(image, dtype=np.float32)
    if mode == "resize":
        t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        if len(size) == 2:
            shrink = any(s < o for s, o in zip(size, spatial))
            out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        else:
            out = F.interpolate(t, size=size, mode="trilinear", align_corners=False)
        return out[0].numpy()
    if mode == "crop_pad":
        out = np.zeros((image.shape[0],) + size, dtype=np.float32)
        src, dst = [slice(None)], [slice(None)]
        for s, o in zip(size, spatial):
            if o >= s:
                a = (o - s) // 2
                src.append(slice(a, a + s))
                dst.append(slice(0, s))
            else:
                a = (s - o) // 2
                src.append(slice(0, o))
                dst.append(slice(a, a + o))
        out[tuple(dst)] = image[tuple(src)]
        return out
    raise BioflowError(f"data.resize: {mode!r} is not allowed; use resize or crop_pad")


def preprocess(image: np.ndarray, stats: dict | None, data_cfg: dict) -> np.ndarray:
    """A ``(z,)y,x,c`` image as stored -> normalized ``(C, *patch_size)`` float32."""
    x = normalize(image, stats, data_cfg["normalization"])
    x = np.moveaxis(x, -1, 0)
    return fit_to_size(x, data_cfg["patch_size"], data_cfg["resize"])


# --- dataset --------------------------------------------------------------------------------

class ClassificationDataset(Dataset):
    """Items ``{"image": (C, *spatial) float32, "target": long (or float multi-hot),
    ["meta": float features], "index": int}``; ``target`` is -1 for unlabelled images."""

    def __init__(self, manifest: dict, entries: list[dict], stats: dict | None, data_cfg: dict,
                 aug_cfg: dict | None = None, multilabel: bool = False,
                 meta_mean=None, meta_std=None, n_labels: int | None = None):
        self.manifest, self.entries, self.stats = manifest, list(entries), stats
        self.data_cfg = data_cfg
        self.aug_cfg = aug_cfg if aug_cfg and aug_cfg["enabled"] else None
        self.multilabel = multilabel
        self.n_labels = n_labels or len(manifest.get("classes") or [])
        self.meta_mean = None if meta_mean is None else np.asarray(meta_mean, np.float32)
        self.meta_std = None if meta_std is None else np.asarray(meta_std, np.float32)
        ncfg = data_cfg["normalization"]
        self._key = (tuple(data_cfg["patch_size"]), data_cfg["resize"],
                     repr(sorted(ncfg.items())), repr(None if stats is None else
                                                      (stats.get("mean"), stats.get("std"),
                                                       stats.get("percentile_low"), stats.get("max"))))

    def __len__(self):
        return len(self.entries)

    def load(self, i: int) -> np.ndarray:
        """The preprocessed (not augmented) image; cached while the budget allows."""
        e = self.entries[i]
        key = (e["path"],) + self._key
        x = _CACHE.get(key)
        if x is None:
            x = preprocess(read_entry_image(self.manifest, e), self.stats, self.data_cfg)
            if _CACHE_BYTES[0] + x.nbytes <= _cache_budget():
                _CACHE[key] = x
                _CACHE_BYTES[0] += x.nbytes
        return x

    def target(self, i: int):
        label = self.entries[i].get("label")
        if self.multilabel:
            if label is None:
                return torch.full((self.n_labels,), -1.0)
            return torch.as_tensor(label, dtype=torch.float32)
        return torch.tensor(-1 if label is None else int(label), dtype=torch.long)

    def __getitem__(self, i):
        x = self.load(i)
        if self.aug_cfg is not None:
            # seed from torch's generator: seeded per run (and per worker) by Lightning
            rng = np.random.default_rng(int(torch.randint(0, 2 ** 31 - 1, (1,)).item()))
            x, _ = augment(x, None, self.aug_cfg, rng)
        item = {"image": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                "target": self.target(i), "index": i}
        if self.meta_mean is not None:
            m = np.asarray(self.entries[i].get("metadata"), dtype=np.float32)
            item["meta"] = torch.from_numpy((m - self.meta_mean) / self.meta_std)
        return item


def metadata_stats(entries: list[dict]) -> tuple[list[float], list[float]] | None:
    """Mean / std of the train metadata features (standardizing them helps the dense head)."""
    rows = [e.get("metadata") for e in entries]
    if not rows or any(r is None for r in rows):
        return None
    a = np.asarray(rows, dtype=np.float64)
    std = a.std(0)
    return a.mean(0).tolist(), np.where(std > 1e-8, std, 1.0).tolist()


class ClassificationDataModule(pl.LightningDataModule):
    """train / val / test datasets of one manifest; ``data_cfg`` decides preprocessing."""

    def __init__(self, manifest: dict, stats: dict | None, data_cfg: dict, train_cfg: dict,
                 multilabel: bool = False, metadata: tuple | None = None, inference_batch: int | None = None):
        super().__init__()
        self.manifest, self.stats, self.data_cfg, self.train_cfg = manifest, stats, data_cfg, train_cfg
        self.multilabel = multilabel
        self.classes = list(manifest["classes"])
        sp = manifest["splits"]
        if data_cfg["metadata_csv"] and metadata is None:
            metadata = metadata_stats(sp.get("train", []))
            if metadata is None:
                raise BioflowError("data.metadata_csv: train images lack metadata in the manifest; "
                                   "rerun validate_dataset")
        self.metadata = metadata
        mm, ms = (metadata if metadata else (None, None))
        self.n_metadata = len(mm) if mm else 0
        kw = dict(multilabel=multilabel, meta_mean=mm, meta_std=ms, n_labels=len(self.classes))
        aug = train_cfg["augmentation"]
        self.train_dataset = ClassificationDataset(manifest, sp.get("train", []), stats, data_cfg, aug, **kw)
        self.val_dataset = ClassificationDataset(manifest, sp.get("val", []), stats, data_cfg, None, **kw)
        self.test_dataset = ClassificationDataset(manifest, sp.get("test", []), stats, data_cfg, None, **kw)
        self.batch_size = int(train_cfg["batch_size"])
        self.inference_batch = int(inference_batch or self.batch_size)
        self.loader_kwargs = loader_kwargs(train_cfg["num_workers"])

    def class_counts(self) -> list[int]:
        """Train images per class (multi-label: positives per label)."""
        n = len(self.classes)
        if self.multilabel:
            arr = np.asarray([e["label"] for e in self.train_dataset.entries if e.get("label") is not None])
            return arr.sum(0).astype(int).tolist() if arr.size else [0] * n
        labels = [e["label"] for e in self.train_dataset.entries if e.get("label") is not None]
        return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n).tolist()

    def _loader(self, ds, shuffle: bool, batch: int):
        return DataLoader(ds, batch_size=batch, shuffle=shuffle, **self.loader_kwargs,
                          # a last batch of one breaks BatchNorm in training
                          drop_last=shuffle and len(ds) > batch)

    def train_dataloader(self):
        return self._loader(self.train_dataset, True, self.batch_size)

    def val_dataloader(self):
        return self._loader(self.val_dataset, False, self.inference_batch)

    def test_dataloader(self):
        return self._loader(self.test_dataset, False, self.inference_batch)
