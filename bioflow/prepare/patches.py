"""Stage ``patch_dataset`` (patch classification workflow): images + defect masks -> patches.

Two input layouts (``patch_layout`` in the manifest, see ``bioflow.data.validate``):
``"masks"`` (``x/`` + ``y/``, masks hold defect class ids, 0 = free): a patch takes the
defect class covering most of it when that covers at least ``patches.min_defect_fraction``,
else class 0. ``"class_folders"`` (one folder per defect class, binary masks): as below.

Every image of the manifest is cut into patches of ``patches.size`` (``[y, x]`` or
``[z, y, x]``) every ``patches.stride`` (default: the size, i.e. no overlap); the last
patch along each axis is aligned to the image border so the whole image is covered; images
smaller than a patch are padded (image: reflect, mask: 0). A patch takes its image's class
(the class folder) when the defect covers at least ``patches.min_defect_fraction`` of it
(and at least one pixel), else the "free" class: the class whose folder name contains
"free" (case-insensitive, e.g. ``MT_Free``) or, if there is none, an extra class ``free``
put first. Defect pixels: ``mask > 127`` for uint8 masks holding values above 1 (0/255 PNG
masks), ``mask > 0`` otherwise.

Output folder (swapped in atomically):

* ``patches.h5``: per split ``<split>/images`` ``(N, *size, c)`` in the images' dtype,
  ``<split>/labels`` ``(N,)`` int64, ``<split>/offsets`` ``(N, ndim)``, ``<split>/source``
  ``(N,)`` index into ``<split>/sources`` (image paths), ``<split>/defect_fraction``;
* ``dataset.txt``: one tab-separated line per patch: split, source image, offset
  (``y,x`` or ``z,y,x``), label name, defect fraction;
* ``info.json``: size, stride, min_defect_fraction, classes, free_class, counts per split and
  class, dtype, channels, ndim.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

from bioflow.data.manifest import load_manifest, read_entry_image
from bioflow.data.masks import apply_mask_transform
from bioflow.errors import BioflowError
from bioflow.io import atomic_dir, read_mask, write_json

log = logging.getLogger(__name__)
FREE = "free"


def patch_classes(classes: list[str]) -> tuple[list[str], int]:
    """(patch class names, index of the free class) from the manifest's class folders."""
    free = [i for i, c in enumerate(classes) if FREE in c.lower()]
    if free:
        return list(classes), free[0]
    return [FREE] + list(classes), 0


def grid_offsets(shape, size, stride) -> list[tuple[int, ...]]:
    """Patch origins covering ``shape``: every ``stride``, the last one flush with the border."""
    per_axis = []
    for dim, s, st in zip(shape, size, stride):
        if dim <= s:
            per_axis.append([0])
            continue
        starts = list(range(0, dim - s + 1, st))
        if starts[-1] != dim - s:
            starts.append(dim - s)
        per_axis.append(starts)
    return list(itertools.product(*per_axis))


def defect_mask(mask: np.ndarray) -> np.ndarray:
    if mask.dtype == np.uint8 and mask.size and mask.max() > 1:
        return mask > 127
    return mask > 0


def _pad_to(arr: np.ndarray, size, mode: str) -> np.ndarray:
    pads = [(0, max(0, s - d)) for d, s in zip(arr.shape, size)]
    if not any(p[1] for p in pads):
        return arr
    pads += [(0, 0)] * (arr.ndim - len(size))
    return np.pad(arr, pads, mode=mode) if mode == "constant" else np.pad(arr, pads, mode="reflect")


def cut_patches(image: np.ndarray, mask: np.ndarray | None, size, stride):
    """Yield ``(offset, image patch, mask patch or None)`` for one ``(z,)y,x,c`` image."""
    ndim = len(size)
    image = _pad_to(image, size, "reflect")
    mask = None if mask is None else _pad_to(mask, size, "constant")
    for off in grid_offsets(image.shape[:ndim], size, stride):
        sl = tuple(slice(o, o + s) for o, s in zip(off, size))
        yield off, image[sl], None if mask is None else mask[sl]


def class_mask_label(mask_patch: np.ndarray, n_classes: int, min_fraction: float) -> tuple[int, float]:
    """Layout "masks" (class-id masks, 0 = free): the defect class covering most of the patch
    when it covers at least ``min_fraction`` of it, else 0. Returns (label, its fraction)."""
    counts = np.bincount(mask_patch.ravel().astype(np.int64), minlength=n_classes)
    if len(counts) < 2:
        return 0, 0.0
    k = int(np.argmax(counts[1:])) + 1
    frac = float(counts[k]) / mask_patch.size
    return (k, frac) if frac > 0 and frac >= min_fraction else (0, frac)


def patch_label(frac: float, class_index: int | None, min_fraction: float, free_index: int) -> int:
    """The patch's class: its image's defect class when enough of it is defect, else free."""
    if class_index is None or class_index == free_index:
        return free_index
    return class_index if frac > 0 and frac >= min_fraction else free_index


def run(cfg: dict, manifest_path, out_dir, test_manifest_path=None) -> dict:
    """Stage patch_dataset; returns the info dict (also written to ``info.json``).
    ``test_manifest_path``: the test part's manifest, whose test split is cut too."""
    manifest = load_manifest(manifest_path)
    if test_manifest_path:
        manifest["splits"]["test"] = load_manifest(test_manifest_path)["splits"]["test"]
    ndim = manifest["ndim"]
    pcfg = cfg["patches"]
    size = [int(s) for s in pcfg["size"]]
    stride = [int(s) for s in (pcfg["stride"] or size)]
    min_fraction = float(pcfg["min_defect_fraction"])
    if len(size) != ndim or len(stride) != ndim:
        raise BioflowError(f"patches.size / patches.stride: need {ndim} values ([y, x] in 2D, "
                           f"[z, y, x] in 3D), got {size} / {stride}")
    by_mask = manifest.get("patch_layout") == "masks"
    if by_mask:  # class ids come from the masks; 0 is free
        classes, free_index = list(manifest["classes"]), 0
    else:
        classes, free_index = patch_classes(manifest["classes"])
    # manifest class index -> patch class index
    remap = {i: classes.index(c) for i, c in enumerate(manifest["classes"])}
    counts: dict[str, Counter] = {}
    dtype = None
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp, h5py.File(tmp / "patches.h5", "w") as h5, \
            open(tmp / "dataset.txt", "w") as txt:
        txt.write("split\tsource\toffset\tlabel\tdefect_fraction\n")
        for split in ("train", "val", "test"):
            entries = manifest["splits"].get(split) or []
            if not entries:
                continue
            counts[split] = Counter()
            g = h5.create_group(split)
            g.create_dataset("sources", data=np.array([e["path"] for e in entries], dtype=h5py.string_dtype()))
            ds = None
            n = 0
            for si, e in enumerate(entries):
                img = read_entry_image(manifest, e)
                mask = read_mask(e["mask"], ndim) if e.get("mask") else None
                if mask is not None and mask.shape != img.shape[:-1]:
                    raise BioflowError(f"{e['mask']}: mask shape {mask.shape} differs from its image "
                                       f"{img.shape[:-1]}; rerun validate_dataset")
                if mask is not None:
                    mask = (apply_mask_transform(mask, manifest.get("mask_transform") or "none")
                            if by_mask else defect_mask(mask))
                cls = remap.get(e["label"]) if e.get("label") is not None else None
                rows, labels = [], []
                for off, patch, mpatch in cut_patches(img, mask, size, stride):
                    if mpatch is None:
                        lab, frac = free_index, 0.0
                    elif by_mask:
                        lab, frac = class_mask_label(mpatch, len(classes), min_fraction)
                    else:
                        frac = float(mpatch.mean())
                        lab = patch_label(frac, cls, min_fraction, free_index)
                    rows.append((off, patch, frac))
                    labels.append(lab)
                if not rows:
                    continue
                if ds is None:
                    dtype = img.dtype
                    c = img.shape[-1]
                    ds = {"images": g.create_dataset("images", (0, *size, c), dtype=img.dtype,
                                                     maxshape=(None, *size, c), chunks=(1, *size, c)),
                          "labels": g.create_dataset("labels", (0,), np.int64, maxshape=(None,)),
                          "offsets": g.create_dataset("offsets", (0, ndim), np.int64, maxshape=(None, ndim)),
                          "source": g.create_dataset("source", (0,), np.int64, maxshape=(None,)),
                          "defect_fraction": g.create_dataset("defect_fraction", (0,), np.float32,
                                                              maxshape=(None,))}
                k = len(rows)
                for d in ds.values():
                    d.resize(n + k, axis=0)
                ds["images"][n:n + k] = np.stack([p for _, p, _ in rows]).astype(dtype, copy=False)
                ds["labels"][n:n + k] = labels
                ds["offsets"][n:n + k] = [o for o, _, _ in rows]
                ds["source"][n:n + k] = si
                ds["defect_fraction"][n:n + k] = [f for _, _, f in rows]
                for (off, _, frac), lab in zip(rows, labels):
                    txt.write(f"{split}\t{e['path']}\t{','.join(map(str, off))}\t{classes[lab]}\t{frac:.4f}\n")
                    counts[split][classes[lab]] += 1
                n += k
        h5.attrs["classes"] = np.array(classes, dtype=h5py.string_dtype())
        h5.attrs["free_class"] = classes[free_index]
        info = {"size": size, "stride": stride, "min_defect_fraction": min_fraction,
                "classes": classes, "free_class": classes[free_index], "ndim": ndim,
                "channels": manifest["channels"], "dtype": None if dtype is None else np.dtype(dtype).name,
                "counts": {s: dict(sorted(c.items())) for s, c in counts.items()},
                "n_patches": {s: int(sum(c.values())) for s, c in counts.items()},
                "h5": str((out_dir / "patches.h5").resolve()), "manifest": str(Path(manifest_path).resolve())}
        write_json(tmp / "info.json", info)
    for split, c in info["counts"].items():
        log.info("patch_dataset %s: %d patches: %s", split, info["n_patches"][split],
                 ", ".join(f"{k}={v}" for k, v in c.items()))
    return info
