"""Segmentation data: images + integer masks from the manifest, patch sampling, datamodule.

Images are decoded and normalised once and kept in memory (float32, ``(z,)y,x,c``); training
patches are cut from them by slicing, so the input pipeline costs almost nothing next to the
model. Patch centres are drawn from a per-image probability map: with
``data.sampling.foreground_bias = b`` a centre is a uniformly drawn foreground pixel with
probability ``b`` and a uniformly drawn pixel otherwise, i.e.
``p = b * fg / |fg| + (1 - b) / N`` (the map BiaPy calls the probability map; saved as TIFF with
``save_probability_maps``). Images smaller than the patch are reflect-padded.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global figure state
from matplotlib.patches import Rectangle
from torch.utils.data import DataLoader, Dataset

from bioflow.data.augment import augment
from bioflow.data.loader import loader_kwargs
from bioflow.data.manifest import entries, read_entry_image, read_entry_mask, relative_name
from bioflow.data.normalization import normalize
from bioflow.errors import BioflowError
from bioflow.geometry import compute_steps, pad_min
from bioflow.io import atomic_path, to_grey, write_image

log = logging.getLogger(__name__)

# --- reading -------------------------------------------------------------------------------

def to_channels(image: np.ndarray, channels: int, path="<image>") -> np.ndarray:
    """Match the channel count the config asks for.

    A colour (RGB/RGBA) image read with ``data.channels: 1`` becomes its luminance
    (ITU-R 601 weights, alpha dropped, original dtype kept) so mixed grey / colour sets such as
    DSB2018 can be trained as single-channel; RGBA with 3 channels drops alpha. Anything else
    that differs is a user error.
    """
    c = image.shape[-1]
    if c == channels:
        return image
    if channels == 1 and c in (3, 4):
        return to_grey(image)  # the same conversion bioflow.io applies when reading
    if channels == 3 and c == 4:
        return image[..., :3]
    raise BioflowError(f"{path}: has {c} channel(s) but data.channels is {channels}; set data.channels")


def read_image(manifest: dict, entry: dict) -> np.ndarray:
    """The entry's image as ``(z,)y,x,c`` with ``manifest['channels']`` channels, stored dtype."""
    return to_channels(read_entry_image(manifest, entry), int(manifest["channels"]), entry["path"])


def read_mask(manifest: dict, entry: dict) -> np.ndarray:
    """The entry's class-id mask ``(z,)y,x`` (``data.mask_transform`` applied)."""
    return read_entry_mask(manifest, entry)


def check_mask(mask: np.ndarray, n_classes: int, path, ignore_index=None) -> np.ndarray:
    """Masks must hold ids ``0..n_classes-1`` (or the ignore index)."""
    if not np.issubdtype(mask.dtype, np.integer):
        if np.any(mask != np.round(mask)):
            raise BioflowError(f"{path}: mask is not integer-valued; masks hold one class id per pixel")
        mask = mask.astype(np.int64)
    vals = np.unique(mask)
    bad = [int(v) for v in vals if (v < 0 or v >= n_classes) and (ignore_index is None or v != ignore_index)]
    if bad:
        raise BioflowError(f"{path}: mask values {bad[:5]} outside 0..{n_classes - 1}; set model.n_classes "
                           f"or data.mask_transform (foreground / boundary_interior for instance masks)")
    return mask.astype(np.int64 if ignore_index is not None and ignore_index > 255 else np.uint8)


def load_normalized(manifest: dict, entry: dict, stats: dict | None, norm_cfg: dict) -> np.ndarray:
    return normalize(read_image(manifest, entry), stats, norm_cfg)


@dataclass
class Sample:
    name: str
    image: np.ndarray                 # float32 (*spatial, c), normalised
    mask: np.ndarray | None = None    # (*spatial,) class ids
    shape: tuple = field(default=())  # original spatial shape (before padding)


def load_samples(manifest: dict, split: str, stats: dict | None, cfg: dict, with_masks: bool = True,
                 pad_to: Sequence[int] | None = None) -> list[Sample]:
    """Decode + normalise every image of ``split`` (and its mask), reflect-padded to ``pad_to``."""
    n_classes = int(cfg["model"]["n_classes"])
    ignore = cfg["train"]["ignore_index"]
    out = []
    for e in entries(manifest, split):
        img = load_normalized(manifest, e, stats, cfg["data"]["normalization"])
        mask = None
        if with_masks and e.get("mask"):
            mask = check_mask(read_mask(manifest, e), n_classes, e["mask"], ignore)
            if mask.shape != img.shape[:-1]:
                raise BioflowError(f"{e['mask']}: mask shape {mask.shape} differs from image shape "
                                   f"{img.shape[:-1]} ({e['path']})")
        shape = img.shape[:-1]
        if pad_to is not None:
            img, mask = pad_min(img, mask, pad_to)
        out.append(Sample(relative_name(e), np.ascontiguousarray(img, dtype=np.float32), mask, tuple(shape)))
    return out


# --- patch sampling (pure) ---------------------------------------------------------------

def probability_map(mask: np.ndarray, foreground_bias: float) -> np.ndarray:
    """Per-pixel probability of being a patch centre: ``b * fg/|fg| + (1 - b)/N`` (sums to 1)."""
    fg = mask > 0
    n = mask.size
    p = np.full(mask.shape, (1.0 - foreground_bias) / n, dtype=np.float64)
    k = int(fg.sum())
    if k:
        p[fg] += foreground_bias / k
    else:
        p[:] = 1.0 / n
    return p.astype(np.float32)


def sample_center(shape: Sequence[int], fg_index: np.ndarray | None, foreground_bias: float,
                  rng: np.random.Generator) -> tuple[int, ...]:
    """A centre drawn from :func:`probability_map` without building it (flat fg indices given)."""
    if fg_index is not None and len(fg_index) and rng.random() < foreground_bias:
        flat = int(fg_index[rng.integers(len(fg_index))])
    else:
        flat = int(rng.integers(int(np.prod(shape))))
    return tuple(int(v) for v in np.unravel_index(flat, tuple(shape)))


def patch_start(center: Sequence[int], shape: Sequence[int], patch: Sequence[int]) -> tuple[int, ...]:
    """Start of the patch of size ``patch`` centred (as near as the borders allow) on ``center``."""
    return tuple(int(min(max(c - p // 2, 0), n - p)) for c, n, p in zip(center, shape, patch))


def crop(arr: np.ndarray, start: Sequence[int], patch: Sequence[int]) -> np.ndarray:
    return arr[tuple(slice(s, s + p) for s, p in zip(start, patch))]


# --- datasets ------------------------------------------------------------------------------

def _worker_rng(seed: int, index: int) -> np.random.Generator:
    # torch's per-worker generator is seeded by Lightning (seed_everything(workers=True)), so
    # drawing from it makes patches reproducible and different per epoch and worker.
    return np.random.default_rng([seed, index, int(torch.randint(0, 2**31 - 1, (1,)).item())])


class PatchDataset(Dataset):
    """Random training patches: image ``i % n`` for item ``i``, centre from the probability map."""

    def __init__(self, samples: list[Sample], patch: Sequence[int], length: int,
                 foreground_bias: float = 0.0, augment: Callable | None = None, seed: int = 0):
        if not samples:
            raise BioflowError("data.train: no training images with masks; check the train/x and train/y folders")
        self.samples = samples
        self.patch = tuple(int(p) for p in patch)
        self.length = int(length)
        self.bias = float(foreground_bias)
        self.augment = augment
        self.seed = seed
        self.fg = [np.flatnonzero(s.mask > 0) if self.bias > 0 else None for s in samples]

    def __len__(self):
        return self.length

    def draw(self, index: int, rng: np.random.Generator):
        s = self.samples[index % len(self.samples)]
        sp = s.image.shape[:-1]
        centre = sample_center(sp, self.fg[index % len(self.samples)], self.bias, rng)
        start = patch_start(centre, sp, self.patch)
        return s, centre, start

    def __getitem__(self, index):
        rng = _worker_rng(self.seed, index)
        s, _, start = self.draw(index, rng)
        x = crop(s.image, start, self.patch)
        y = crop(s.mask, start, self.patch)
        if self.augment is not None:
            x, y = self.augment(np.ascontiguousarray(x), np.ascontiguousarray(y), rng)
        return to_tensors(x, y)


class GridPatchDataset(Dataset):
    """Deterministic non-overlapping patches covering every image (validation, per-patch metrics)."""

    def __init__(self, samples: list[Sample], patch: Sequence[int], max_patches: int | None = None):
        self.samples = samples
        self.patch = tuple(int(p) for p in patch)
        items = []
        for i, s in enumerate(samples):
            steps = [compute_steps(n, p, 0.0) for n, p in zip(s.image.shape[:-1], self.patch)]
            items += [(i, st) for st in itertools.product(*steps)]
        if max_patches and len(items) > max_patches:
            # an even subsample keeps every image represented and the epoch cost bounded
            pick = np.linspace(0, len(items) - 1, max_patches).round().astype(int)
            items = [items[j] for j in pick]
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        i, start = self.items[index]
        s = self.samples[i]
        return to_tensors(crop(s.image, start, self.patch), crop(s.mask, start, self.patch))


def to_tensors(x: np.ndarray, y: np.ndarray):
    """(*sp, c) float32 + (*sp,) ids -> (c, *sp) float tensor + (*sp,) int64 tensor."""
    xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 0), dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y).astype(np.int64))
    return xt, yt


# --- augmentation ------------------------------------------------------------------------

def make_augment(cfg: dict) -> Callable | None:
    """Joint image + mask augmentation (``train.augmentation``) from the shared
    ``bioflow.data.augment``; takes and returns channels-last patches."""
    acfg = cfg["train"]["augmentation"]
    if not acfg["enabled"]:
        return None

    def run(x, y, rng):
        xc, yc = augment(np.moveaxis(x, -1, 0), y, acfg, rng)
        return np.moveaxis(xc, 0, -1), yc

    return run


# --- sample figures ----------------------------------------------------------------------

def save_sample_figures(dataset: PatchDataset, out_dir, n: int, seed: int = 0) -> list[Path]:
    """A few images with the sampled patch square and its centre marked on image and mask."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(min(n, len(dataset.samples))):
        s, centre, start = dataset.draw(k, rng)
        img, mask = s.image, s.mask
        if img.ndim == 4:  # 3D: the z slice through the centre
            img, mask = img[centre[0]], mask[centre[0]]
            centre, start, patch = centre[1:], start[1:], dataset.patch[1:]
        else:
            patch = dataset.patch
        fig = Figure(figsize=(8, 4))
        axes = fig.subplots(1, 2)
        shown = img[..., 0] if img.shape[-1] != 3 else np.clip((img - img.min()) / (np.ptp(img) + 1e-8), 0, 1)
        for ax, data, title in ((axes[0], shown, "image"), (axes[1], mask, "mask")):
            ax.imshow(data, cmap="gray" if data.ndim == 2 else None, interpolation="nearest")
            ax.add_patch(Rectangle((start[1] - 0.5, start[0] - 0.5), patch[1], patch[0], fill=False,
                                   edgecolor="red", linewidth=1.5))
            ax.plot(centre[1], centre[0], "r+", markersize=10)
            ax.set_title(f"{title}: {s.name}", fontsize=8)
            ax.axis("off")
        fig.tight_layout()
        path = out_dir / f"patch_sample_{k}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        paths.append(path)
    return paths


def save_probability_maps(samples: list[Sample], foreground_bias: float, out_dir) -> list[Path]:
    """Write each training image's probability map as a float32 TIFF (same base name)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in samples:
        path = out_dir / (Path(s.name).stem + ".tif")
        write_image(path, probability_map(s.mask, foreground_bias), channels_last=False)
        paths.append(path)
    return paths


# --- the datamodule ----------------------------------------------------------------------

class SegmentationDataModule(pl.LightningDataModule):
    """Train patches (random, foreground-biased) and val patches (grid) from in-memory samples."""

    def __init__(self, cfg: dict, train: list[Sample], val: list[Sample], seed: int = 0,
                 max_val_patches: int = 128):
        super().__init__()
        self.cfg = cfg
        d, t = cfg["data"], cfg["train"]
        patch = d["patch_size"]
        sampling = d["sampling"]
        per_image = int(sampling["patches_per_image"])
        bs = int(t["batch_size"])
        length = int(t["steps_per_epoch"]) * bs if t["steps_per_epoch"] else per_image * len(train)
        self.train_dataset = PatchDataset(train, patch, max(length, bs), float(sampling["foreground_bias"]),
                                      make_augment(cfg), seed)
        self.val_dataset = GridPatchDataset(val, patch, max_val_patches) if val else None
        self.batch_size = bs
        self.loader_kwargs = loader_kwargs(t["num_workers"])

    def _loader(self, ds, shuffle):
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, drop_last=False, **self.loader_kwargs)

    def train_dataloader(self):
        return self._loader(self.train_dataset, True)

    def val_dataloader(self):
        return self._loader(self.val_dataset, False) if self.val_dataset is not None and len(self.val_dataset) else []
