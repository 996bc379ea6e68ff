"""Stage ``patch_dataset`` (patch classification workflow): images + defect masks -> quadra's
patch dataset.

Every image of the manifests comes with a class-index mask (:func:`class_mask`: 0 = good;
an image without a mask is wholly good). The output folder (``prepared/patches``, swapped in
atomically) has quadra's layout:

* ``original/images``, ``original/masks`` (``patches.save_original_images_and_masks``): the
  images and their class-index masks (PNG), what the other files point to; the masks of the
  test images are always written (the metrics compare against them);
* ``train/<stem>_good.h5`` (where good patches can be drawn: the image minus its defects
  dilated by a patch) and ``train/<stem>_<k>.h5`` per annotated region ``k`` (the region,
  enlarged to a patch when smaller), each holding ``img_path``, ``mask_path``,
  ``patch_size``, ``triangles`` ``(N, 3, 2)`` (y, x) and ``triangles_weights`` (area / total
  area), plus ``labelled_index`` for a region. The region is cut into pixel rectangles (an
  exact polygon cover) and each rectangle into two triangles, so drawing a triangle by
  weight and a point uniformly inside it draws patch centres uniformly inside the region.
  ``train/dataset.txt``: one ``<h5 name>,<class name>`` line per sample (quadra's format,
  with ``repeat_good_images`` / ``balance_defects`` deciding the good lines);
* ``val/<class>/<stem>_<i>.png`` and ``test/<class>/...``: every grid patch (``i`` = row *
  columns + column), ``#DISCARD#``-prefixed when it holds defect pixels below both
  thresholds (ambiguous: left out of the patch metrics, kept for reconstruction); an
  unlabelled test set goes to ``test/None/``;
* ``classification/{train,val}/<class>/`` (``patches.classification_folders: k``): ``k``
  patches drawn per dataset.txt line and the unambiguous val grid patches, class folders
  that the classification workflow reads (train a backbone on the patches, then give its
  checkpoint as ``model.weights``);
* ``info.json``: classes, ``class_to_idx``, the generation parameters, patch counts per
  split and class, and the image / mask files of each split.

Grid (val / test, and reconstruction): with ``patch_size`` a patch every ``size -
int(overlap * size)`` pixels, the last one flush with the border; with ``patch_number`` a
per-image size ``ceil(dim / (1 + (n - 1)(1 - overlap)))`` and ``n`` evenly spaced origins.
Images smaller than a patch are padded (image: reflect, mask: 0).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import numpy as np
from scipy.ndimage import maximum_filter
from skimage.measure import label, regionprops

from bioflow.data.manifest import load_manifest, read_entry_image
from bioflow.data.masks import apply_mask_transform
from bioflow.data.patch_sampling import DISCARD, UNLABELLED, draw, grid_patches, pad_to, read_region, resolve
from bioflow.errors import BioflowError
from bioflow.io import atomic_dir, read_mask, write_image, write_json

log = logging.getLogger(__name__)

FREE_NAMES = ("free", "good")


# --- classes ---------------------------------------------------------------------------

def folder_classes(folders: list[str]) -> list[str]:
    """Class-folder layout: the class names with the good one first (index 0): the folder
    whose name contains "free" or "good" (case-insensitive, e.g. ``MT_Free``), else an added
    class ``good``."""
    free = [c for c in folders if any(f in c.lower() for f in FREE_NAMES)]
    if free:
        return [free[0]] + [c for c in sorted(folders) if c != free[0]]
    return ["good"] + sorted(folders)


def defect_mask(mask: np.ndarray) -> np.ndarray:
    """Binary defect mask: ``> 127`` for uint8 masks holding values above 1 (0/255 PNGs)."""
    if mask.dtype == np.uint8 and mask.size and mask.max() > 1:
        return mask > 127
    return mask > 0


def class_mask(entry: dict, manifest: dict) -> np.ndarray | None:
    """The class-index mask of a manifest entry (0 = good); zeros for an image without a
    mask; None when its classes are unknown (unlabelled test image of a class-folder set)."""

    shape = tuple(entry["shape"][:2])
    layout = manifest["patch_layout"]
    if layout == "class_folders" and entry.get("label") is None:
        return None
    if not entry.get("mask"):
        return np.zeros(shape, np.uint8)
    m = read_mask(entry["mask"], 2)
    if layout == "class_folders":
        return (defect_mask(m) * int(entry["label"])).astype(np.uint8)
    m = apply_mask_transform(m, manifest.get("mask_transform") or "none")
    return m.astype(np.uint8 if m.max(initial=0) < 256 else np.uint16)


# --- grid ----------------------------------------------------------------------------------

def grid(shape, patch_size=None, patch_number=None, overlap: float = 0.0):
    """``(size, ys, xs)``: patch size and origins along y and x covering an image of
    ``shape`` (padded to at least one patch)."""
    size, starts = [], []
    for a, dim in enumerate(shape[:2]):
        if patch_size is not None:
            s = int(patch_size[a])
            dim = max(dim, s)
            step = max(1, s - int(overlap * s))
            st = list(range(0, dim - s + 1, step))
            if st[-1] != dim - s:
                st.append(dim - s)
        else:
            n = int(patch_number[a])
            s = min(dim, math.ceil(dim / (1 + (n - 1) * (1 - overlap))))
            st = sorted({int(round(v)) for v in np.linspace(0, dim - s, n)}) if n > 1 else [0]
            if len(st) < n:
                raise BioflowError(f"patches.patch_number: {n} patches do not fit along an axis of "
                                   f"{dim} pixels; lower patch_number")
        size.append(s)
        starts.append(st)
    return tuple(size), starts[0], starts[1]


# --- labelling a grid patch (quadra's rule) ---------------------------------------------------

def grid_patch_label(mask_patch: np.ndarray, labelled_patch: np.ndarray, component_area: np.ndarray,
                     area_threshold: float, area_defect_threshold: float) -> tuple[int, bool]:
    """(class, discard) of one patch: the defect class covering more than ``area_threshold``
    of the patch, or holding more than ``area_defect_threshold`` of one of its annotated
    defects (``component_area[k]`` = pixels of defect ``k`` in the whole image); the larger
    such area wins. Defect pixels without either: good, and ``discard``."""
    if not mask_patch.any():
        return 0, False
    best, best_area = 0, 0
    patch_th = mask_patch.size * area_threshold
    for k in np.unique(mask_patch):
        if k == 0:
            continue
        sel = mask_patch == k
        area = int(sel.sum())
        if area > patch_th:
            if area > best_area:
                best, best_area = int(k), area
            continue
        comps, counts = np.unique(labelled_patch[sel], return_counts=True)
        for c, n in zip(comps, counts):
            if c and n > component_area[c] * area_defect_threshold and n > best_area:
                best, best_area = int(k), int(n)
    return best, best == 0


# --- sampling regions as triangles -------------------------------------------------------------

def triangulate_region(region: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Triangles ``(N, 3, 2)`` int32 (y, x vertices, pixel-corner coordinates) covering the
    True pixels of ``region`` exactly, and their area weights (sum 1); (None, None) if empty.
    Row runs are merged into maximal rectangles; each rectangle is two triangles."""
    region = np.asarray(region, bool)
    if not region.any():
        return None, None
    h, w = region.shape
    rects, open_runs = [], {}
    padded = np.zeros(w + 2, np.int8)
    for y in range(h + 1):
        runs = set()
        if y < h:
            padded[1:-1] = region[y]
            d = np.diff(padded)
            runs = set(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))
        for key in [k for k in open_runs if k not in runs]:
            rects.append((open_runs.pop(key), y, *key))
        for key in runs:
            open_runs.setdefault(key, y)
    tri = []
    for y0, y1, x0, x1 in rects:
        tri.append([[y0, x0], [y0, x1], [y1, x1]])
        tri.append([[y0, x0], [y1, x1], [y1, x0]])
    tri = np.asarray(tri, np.int32)
    area = np.repeat([(y1 - y0) * (x1 - x0) / 2.0 for y0, y1, x0, x1 in rects], 2)
    return tri, area / area.sum()


def _dilate(mask: np.ndarray, size) -> np.ndarray:
    size = tuple(max(1, int(s)) for s in size)
    return maximum_filter(mask.astype(np.uint8), size=size, mode="constant").astype(bool)


def _drop_edges(region: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """The region without a half-patch border (centres there need padding), unless empty."""
    inner = region.copy()
    inner[: ph // 2] = False
    inner[:, : pw // 2] = False
    inner[region.shape[0] - ph // 2:] = False
    inner[:, region.shape[1] - pw // 2:] = False
    return inner if inner.any() else region


def train_regions(mask: np.ndarray, ph: int, pw: int, annotated_good=()):
    """(good region or None, [(region index, class, region)]) of one training image."""
    defects = mask > 0
    good = None
    if not defects.any():
        good = np.ones(mask.shape, bool)
    else:
        g = ~_dilate(defects, (ph, pw))
        g = _drop_edges(g, ph, pw) if g.any() else g
        # a patch as tall / wide as the image: only columns / rows free of defects
        if ph >= mask.shape[0]:
            g[:, ~g.all(axis=0)] = False
        if pw >= mask.shape[1]:
            g[~g.all(axis=1)] = False
        good = g if g.any() else None
    regions = []
    labelled = label(defects, connectivity=2)
    real = None
    if annotated_good:
        real = _dilate(~np.isin(mask, [0, *annotated_good]), (ph, pw))
    for props in regionprops(labelled):
        k = props.label
        comp = labelled == k
        cls = int(mask[comp].max())
        if real is not None and cls in annotated_good:
            comp = comp & ~real
        else:
            # small defects: enlarge the centre region towards a patch, so patches are not
            # all centred on the defect
            bh, bw = props.bbox[2] - props.bbox[0], props.bbox[3] - props.bbox[1]
            dh, dw = max(0, ph - bh) // 2, max(0, pw - bw) // 2
            if dh or dw:
                comp = _dilate(comp, (dh or 1, dw or 1))
        if comp.any():
            regions.append((int(k), cls, _drop_edges(comp, ph, pw)))
    return good, regions


# --- the stage ---------------------------------------------------------------------------------

def _params(cfg) -> dict:
    p = cfg["patches"]
    return {"patch_size": p["patch_size"], "patch_number": p["patch_number"], "overlap": float(p["overlap"]),
            "area_threshold": float(p["area_threshold"]),
            "area_defect_threshold": float(p["area_defect_threshold"]),
            "repeat_good_images": int(p["repeat_good_images"]), "balance_defects": bool(p["balance_defects"]),
            "annotated_good": p["annotated_good"],
            "save_original_images_and_masks": bool(p["save_original_images_and_masks"]),
            "classification_folders": int(p["classification_folders"])}


def _write_h5(path: Path, img_path: str, mask_path: str | None, patch_size, triangles, weights,
              labelled_index=None) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("img_path", data=img_path)
        if mask_path is not None:
            f.create_dataset("mask_path", data=mask_path)
        f.create_dataset("patch_size", data=np.asarray(patch_size, np.int64))
        f.create_dataset("triangles", data=triangles, dtype=np.int32)
        f.create_dataset("triangles_weights", data=weights, dtype=np.float64)
        if labelled_index is not None:
            f.create_dataset("labelled_index", data=labelled_index, dtype=np.int32)


def _train_image(job) -> list[str]:
    """The h5 files of one training image; returns its dataset.txt lines."""
    item, mask, out, classes, p, ag = job
    stem = Path(item["image_path"]).stem
    shape = mask.shape
    size, _, _ = grid(shape, p["patch_size"], p["patch_number"], p["overlap"])
    ph, pw = size
    good, regions = train_regions(pad_to(mask, size, "constant"), ph, pw, ag)
    lines = []
    good_name = f"{stem}_good.h5"
    if good is not None:
        tri, wts = triangulate_region(good)
        _write_h5(out / good_name, item["image_path"], item["mask_path"], size, tri, wts)
    if not regions:
        if good is not None:
            lines += [f"{good_name},{classes[0]}\n"] * p["repeat_good_images"]
        return lines
    if good is not None and not p["balance_defects"]:
        lines.append(f"{good_name},{classes[0]}\n")
    for k, cls, region in regions:
        tri, wts = triangulate_region(region)
        name = f"{stem}_{k}.h5"
        _write_h5(out / name, item["image_path"], item["mask_path"], size, tri, wts, k)
        lines += [f"{name},{classes[cls]}\n"] * (p["repeat_good_images"] if cls in ag else 1)
        if p["balance_defects"] and good is not None:
            lines.append(f"{good_name},{classes[0]}\n")
    return lines


def _patch_ext(img: np.ndarray) -> str:
    c = img.shape[-1]
    return ".png" if (img.dtype == np.uint8 and c in (1, 3, 4)) or (img.dtype == np.uint16 and c == 1) else ".tif"


def _grid_split(items, masks, images, out: Path, classes, p, labelled: bool) -> tuple[Counter, int]:
    """Every grid patch of a val / test image into ``out/<class>/`` (or ``out/None``)."""

    counts, discarded = Counter(), 0
    for item, mask, img in zip(items, masks, images):
        size, ys, xs = grid(img.shape, p["patch_size"], p["patch_number"], p["overlap"])
        img = pad_to(img, size, "reflect")
        stem, ext = Path(item["image_path"]).stem, _patch_ext(img)
        if mask is not None:
            mask = pad_to(mask, size, "constant")
            lab = label(mask > 0, connectivity=2)
            comp_area = np.bincount(lab.ravel())
        for i, (y, x) in enumerate(itertools.product(ys, xs)):
            sl = (slice(y, y + size[0]), slice(x, x + size[1]))
            if mask is None or not labelled:
                cls, drop = UNLABELLED, False
            else:
                k, drop = grid_patch_label(mask[sl], lab[sl], comp_area, p["area_threshold"],
                                           p["area_defect_threshold"])
                cls = classes[k]
            name = f"{DISCARD if drop else ''}{stem}_{i}{ext}"
            write_image(out / cls / name, img[sl])
            if drop:
                discarded += 1
            else:
                counts[cls] += 1
    return counts, discarded


def classification_folders(root: Path, lines: list[str], images: dict, per_line: int, seed: int = 0) -> dict:
    """``root/classification/{train,val}/<class>/``: ``per_line`` patches drawn (quadra's
    sampling, as patch_features draws them) per dataset.txt line, and the val grid patches
    without the ambiguous ``#DISCARD#`` ones (hard links); a dataset for the classification
    workflow. ``images``: resolved image path -> image. Returns the counts per split and class."""
    rng = np.random.default_rng(seed)
    out = root / "classification"
    counts = {"train": Counter(), "val": Counter()}
    drawn = Counter()  # an h5 named on several lines (balance_defects) gets new names
    for line in lines:
        name, cls = line.strip().rsplit(",", 1)
        region = read_region(root / "train" / name, root)
        img = images[str(region.img_path)]
        for _ in range(per_line):
            patch, _ = draw(region, img, rng)
            write_image(out / "train" / cls / f"{Path(name).stem}_{drawn[name]}{_patch_ext(patch)}", patch)
            drawn[name] += 1
            counts["train"][cls] += 1
    for g in grid_patches(root / "val"):
        if g.discard or g.class_name is None:
            continue
        dst = out / "val" / g.class_name / g.path.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(g.path, dst)
        except OSError:  # a file system without hard links
            shutil.copy2(g.path, dst)
        counts["val"][g.class_name] += 1
    return {s: dict(sorted(c.items())) for s, c in counts.items()}


def run(cfg: dict, manifest_path, out_dir, test_manifest_path=None, num_workers: int = 1) -> dict:
    """Stage patch_dataset; returns the info dict (also written to ``info.json``).
    ``manifest_path``: the train part (None in a predict-only run); ``test_manifest_path``:
    the test part."""

    p = _params(cfg)
    parts = [load_manifest(m) for m in (manifest_path, test_manifest_path) if m]
    if not parts:
        raise BioflowError("patch_dataset: no manifest given; run validate_train / validate_test")
    first = parts[0]
    classes = list(first["classes"])
    ag = [classes.index(c) for c in (p["annotated_good"] or [])]
    splits = {}
    for m in parts:
        for s in ("train", "val") if m.get("part") == "train" else ("test",):
            splits[s] = (m, m["splits"].get(s) or [])
    names = Counter(Path(e["path"]).stem for _, es in splits.values() for e in es)
    dup = sorted(n for n, c in names.items() if c > 1)
    if dup:
        raise BioflowError(f"patch_dataset: {len(dup)} image name(s) used twice (e.g. {dup[:3]}); patch "
                           f"files are named after their image, give every image a unique name")
    out_dir = Path(out_dir)
    info = {"classes": classes, "class_to_idx": {c: i for i, c in enumerate(classes)}, **p,
            "channels": first["channels"], "counts": {}, "discarded": {}}
    train_images, lines = {}, []
    with atomic_dir(out_dir) as tmp:
        for s in ("train", "val", "test"):
            if s not in splits:
                continue
            m, entries = splits[s]
            labelled = s != "test" or bool(m.get("test_has_labels", True))
            items, masks, images = [], [], []
            for e in entries:
                img = read_entry_image(m, e)
                mask = class_mask(e, m)
                item = {"image_path": e["path"], "mask_path": None}
                if p["save_original_images_and_masks"]:
                    rel = f"original/images/{Path(e['path']).name}"
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(e["path"], tmp / rel)
                    item["image_path"] = rel
                if mask is not None and (p["save_original_images_and_masks"] or s == "test"):
                    # the class-index mask (the test ones always: metrics compare against them)
                    item["mask_path"] = f"original/masks/{Path(e['path']).stem}.png"
                    write_image(tmp / item["mask_path"], mask, channels_last=False)
                items.append(item)
                masks.append(mask)
                images.append(img)
                if s == "train":
                    train_images[str(resolve(tmp, item["image_path"]))] = img
            info[f"{s}_files"] = items
            if s == "train":
                (tmp / "train").mkdir()
                jobs = [(it, mk, tmp / "train", classes, p, ag) for it, mk in zip(items, masks)]
                if num_workers > 1 and len(jobs) > 1:
                    with ProcessPoolExecutor(min(num_workers, len(jobs))) as pool:
                        per_image = list(pool.map(_train_image, jobs))
                else:
                    per_image = [_train_image(j) for j in jobs]
                lines = [ln for ls in per_image for ln in ls]
                (tmp / "train" / "dataset.txt").write_text("".join(lines))
                info["counts"]["train"] = dict(sorted(Counter(ln.strip().rsplit(",", 1)[1] for ln in lines).items()))
            else:
                counts, dropped = _grid_split(items, masks, images, tmp / s, classes, p, labelled)
                info["counts"][s] = dict(sorted(counts.items()))
                info["discarded"][s] = dropped
        if p["classification_folders"] and lines:
            info["classification_counts"] = classification_folders(tmp, lines, train_images,
                                                                   p["classification_folders"])
        write_json(tmp / "info.json", info)
    for s, c in info["counts"].items():
        log.info("patch_dataset %s: %s%s", s, ", ".join(f"{k}={v}" for k, v in c.items()),
                 f" (+{info['discarded'][s]} discarded)" if info["discarded"].get(s) else "")
    return info
