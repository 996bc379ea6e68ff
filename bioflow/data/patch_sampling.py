"""Patches of the patch classification workflow, read back from ``prepared/patches``.

Training: quadra's sampling. Each ``train/dataset.txt`` line names an h5 file (a region of
one image as triangles with area weights) and a class; a patch is drawn by picking a
triangle by weight, a point uniformly inside it (the patch centre), and cutting the patch
around it, shifted to stay inside the image. Val / test: the grid patch files of the class
folders.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bioflow.errors import BioflowError

DISCARD = "#DISCARD#"  # prefix of an ambiguous grid patch (quadra's)
UNLABELLED = "None"    # class folder of the patches of an unlabelled test set


def pad_to(arr: np.ndarray, size, mode: str) -> np.ndarray:
    """``arr`` (``y, x[, c]``) padded at the bottom / right to at least ``size``."""
    pads = [(0, max(0, s - d)) for d, s in zip(arr.shape[:2], size)]
    if not any(p[1] for p in pads):
        return arr
    pads += [(0, 0)] * (arr.ndim - 2)
    if mode == "reflect" and any(p[1] >= d for p, d in zip(pads, arr.shape)):
        mode = "symmetric"  # reflect needs the image longer than the padding
    return np.pad(arr, pads, mode=mode)


def resolve(patches_dir, path: str) -> Path:
    """A path of info.json / an h5 file: relative ones are inside the patches folder."""
    q = Path(path)
    return q if q.is_absolute() else Path(patches_dir) / q


def load_train_file(path, include_filter=None, exclude_filter=None, class_to_skip=None) -> tuple[list[str], list[str]]:
    """(h5 paths, class names) of ``train/dataset.txt`` after the filters (quadra's
    ``load_train_file``): lines whose h5 name holds none of ``include_filter`` or any of
    ``exclude_filter``, or whose class is in ``class_to_skip``, are dropped."""
    path = Path(path)
    samples, targets = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        sample, target = line.rsplit(",", 1)
        if class_to_skip and target in class_to_skip:
            continue
        if include_filter and not any(f in sample for f in include_filter):
            continue
        if exclude_filter and any(f in sample for f in exclude_filter):
            continue
        samples.append(str(path.parent / sample))
        targets.append(target)
    return samples, targets


def balance(samples: list[str], targets: list[str]) -> tuple[list[str], list[str]]:
    """Lines of every class repeated (cycled) up to the most frequent class's count."""
    counts = Counter(targets)
    if not counts:
        return samples, targets
    top = max(counts.values())
    out_s, out_t = [], []
    for cls in sorted(counts):
        idx = [i for i, t in enumerate(targets) if t == cls]
        idx = np.resize(idx, top).tolist()
        out_s += [samples[i] for i in idx]
        out_t += [cls] * top
    return out_s, out_t


def trisample(triangle: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A point drawn uniformly inside a triangle of (y, x) vertices."""
    (y1, x1), (y2, x2), (y3, x3) = np.asarray(triangle, np.float64)
    r1, r2 = rng.random(), rng.random()
    s1 = math.sqrt(r1)
    return (y1 * (1 - s1) + y2 * (1 - r2) * s1 + y3 * r2 * s1,
            x1 * (1 - s1) + x2 * (1 - r2) * s1 + x3 * r2 * s1)


def safe_origin(centre: int, size: int, dim: int) -> int:
    """Origin of a ``size`` window centred on ``centre`` moved to lie inside ``[0, dim)``."""
    return int(min(max(centre - size // 2, 0), max(dim - size, 0)))


@dataclass
class Region:
    img_path: Path
    patch_size: tuple[int, int]
    triangles: np.ndarray
    weights: np.ndarray


def read_region(h5_path, patches_dir) -> Region:
    import h5py
    try:
        with h5py.File(h5_path, "r") as f:
            img = f["img_path"][()]
            img = img.decode() if isinstance(img, bytes) else str(img)
            return Region(resolve(patches_dir, img), tuple(int(v) for v in f["patch_size"][()]),
                          np.asarray(f["triangles"][()]), np.asarray(f["triangles_weights"][()], np.float64))
    except (OSError, KeyError) as exc:
        raise BioflowError(f"{h5_path}: not a patch-sampling h5 file ({exc}); rerun patch_dataset") from None


def draw(region: Region, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """(patch, its origin) drawn from ``region`` of ``image`` (``y, x, c``)."""
    ph, pw = region.patch_size
    image = pad_to(image, (ph, pw), "reflect")
    t = rng.choice(len(region.weights), p=region.weights)
    y, x = trisample(region.triangles[t], rng)
    y = min(int(y), image.shape[0] - 1)
    x = min(int(x), image.shape[1] - 1)
    oy, ox = safe_origin(y, ph, image.shape[0]), safe_origin(x, pw, image.shape[1])
    return image[oy:oy + ph, ox:ox + pw], (oy, ox)


def train_samples(patches_dir, p: dict) -> tuple[list[str], list[str]]:
    """The dataset.txt lines training uses (filters, balance, ``iteration_over_training``)."""
    samples, targets = load_train_file(Path(patches_dir) / "train" / "dataset.txt", p["include_filter"],
                                       p["exclude_filter"], p["class_to_skip_training"])
    if not samples:
        raise BioflowError(f"{patches_dir}/train/dataset.txt: no training line left after "
                           f"patches.include_filter / exclude_filter / class_to_skip_training")
    if p["balance_classes"]:
        samples, targets = balance(samples, targets)
    k = int(p["iteration_over_training"])
    return samples * k, targets * k


@dataclass
class GridPatch:
    path: Path
    class_name: str | None  # None: unlabelled
    image: str              # stem of the source image
    index: int              # row * columns + column on the image's grid
    discard: bool


def grid_patches(split_dir) -> list[GridPatch]:
    """Every patch file of ``val/`` or ``test/`` (class folders), sorted by image and index."""
    split_dir = Path(split_dir)
    out = []
    if not split_dir.is_dir():
        return out
    for d in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        for f in sorted(d.iterdir()):
            name = f.stem
            discard = name.startswith(DISCARD)
            name = name[len(DISCARD):] if discard else name
            stem, _, idx = name.rpartition("_")
            out.append(GridPatch(f, None if d.name == UNLABELLED else d.name, stem, int(idx), discard))
    out.sort(key=lambda g: (g.image, g.index))
    return out
