"""Dataset validation: the file-level checks every workflow shares, collected, not raised one
by one. Used by the ``validate_train`` / ``validate_test`` stages of ``bioflow/workflows/``,
where each workflow module scans its own layout (class folders, x/ + y/ pairs, ...).

Every problem found is collected and raised in ONE :class:`BioflowError`, each naming the
file (or folder / config key) and what to do: unreadable or truncated files, non-image
files, wrong number of axes (a 3D file in a 2D config) or channels, class-folder count
different from ``model.n_classes``, empty class folders, val/test classes unseen in train,
images without masks and masks without images, pairs whose names differ, mask shape different
from the image, non-integer masks, mask values >= ``n_classes`` (after
``data.mask_transform``), NaN/Inf in images, missing folders, images without a row in
``data.labels_csv`` / ``data.metadata_csv`` or with non-numeric metadata.

Inputs are only read, never modified. Every file is decoded completely (a header alone would
not reveal a truncated file or NaNs), on a few threads: decoders release the GIL.

Two parts, two manifests (:data:`PARTS`): train + val (what training reads) and test (what
prediction reads). Validation split when ``data.val`` is null (or, with ``data.csv``, when
the CSV had no val rows): a ``data.val_split`` fraction of train, stratified by class for
classification, seeded by ``experiment.split_seed``; stored in the manifest so every run_id
shares it. Cross-validation (``data.cv_folds: k``): train and val pooled, each entry given its
``fold`` 1..k by the same seeded, stratified-when-possible splitting; run i validates on fold i
(``bioflow.data.manifest.for_run``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bioflow import progress
from bioflow.errors import BioflowError
from bioflow.io import IMAGE_EXTENSIONS, image_info, is_image_file, read_image, read_mask, write_json

log = logging.getLogger(__name__)

IGNORED_FILES = {"thumbs.db", "desktop.ini"}
MASK_SUFFIXES = ("_mask", "_masks", "_label", "_labels", "_gt")
MAX_LISTED = 200  # problems listed in the error (the count says how many more)
NAMED = 5  # files named per adaptation in a message (the manifest lists all)

# What bioflow adapts on its own, per kind: a warning in the stage log, listed in the manifest
# and the report; data.strict: true makes each an error instead.
ADAPTATIONS = {
    "colour_to_grey": ("colour (RGB/RGBA) image(s) read as grey (luminance) because data.channels is 1",
                       "convert them to grey"),
    "alpha_dropped": ("image(s) with an alpha channel read without it", "remove the alpha channel"),
    "padded": ("image(s) smaller than the patch size {min_size}, reflect-padded up to it",
               "use a smaller patch size or larger images"),
    "ignored": ("file(s) outside the class folders ignored", "move or remove them"),
}
_THREADS = min(4, os.cpu_count() or 1)


def _files(folder: Path, problem=None) -> list[Path]:
    """All non-hidden files under ``folder`` (recursively, following symbolic links), sorted.

    ``problem`` (a callable) receives one line per link that loops or points nowhere and per
    pair of names differing only in case (one file on macOS / Windows, two on Linux, so the
    dataset would differ between machines); without it they are skipped silently.
    """
    report = problem or (lambda msg: None)
    out, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back to a folder already listed: a loop
            report(f"{dirpath}: symbolic link to a folder already scanned ({real}): a loop or the "
                   f"same images twice; remove the link")
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names = [f for f in filenames if not f.startswith(".") and f.lower() not in IGNORED_FILES]
        for f in names:
            full = Path(dirpath) / f
            if full.is_symlink() and not full.exists():
                report(f"{full}: broken or looping symbolic link; fix or remove it")
            else:
                out.append(full)
        _case_clashes(Path(dirpath), names + dirnames, report)
    return sorted(out)


def _case_clashes(folder: Path, names, report) -> None:
    by_lower: dict[str, list[str]] = {}
    for name in names:
        by_lower.setdefault(name.lower(), []).append(name)
    for same in by_lower.values():
        if len(same) > 1:
            report(f"{folder / sorted(same)[0]}: names differ only in case ({', '.join(sorted(same))}); "
                   f"they are one file on macOS / Windows; rename or remove all but one")


def class_folders(folder: Path) -> list[Path]:
    """The class folders of a classification split (sorted; hidden ones skipped)."""
    return _subdirs(folder)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _abs(p) -> str:
    return os.path.abspath(os.fspath(p))


class Checker:
    """Collects every problem of a dataset; the file-level checks all workflows share.

    ``masks``: images come with integer masks whose values are class ids (< ``n_classes``
    unless a ``data.mask_transform`` maps instance labels to classes).
    """

    def __init__(self, cfg, masks: bool = False, part: str = "train"):
        self.ndim = int(cfg["experiment"]["ndim"])
        self.channels = int(cfg["data"]["channels"])
        self.channel_axis = cfg["data"]["channel_axis"]
        self.n_classes = int(cfg["model"]["n_classes"])
        self.mask_transform = cfg["data"]["mask_transform"] if masks else "none"
        self.mask_classes = masks
        self.part = part
        # only the test part may be unlabelled
        self.test_has_labels = bool(cfg["data"]["test_has_labels"]) if part == "test" else True
        self.strict = bool(cfg["data"]["strict"])
        # spatial size training / prediction crops (smaller images get padded); set by the workflow
        self.min_size: tuple[int, ...] | None = None
        self.problems: list[str] = []
        self.adapted: dict[str, list[str]] = {k: [] for k in ADAPTATIONS}

    def problem(self, msg: str) -> None:
        self.problems.append(msg)

    # --- one file --------------------------------------------------------------------

    def non_images(self, files: list[Path]) -> list[Path]:
        images = []
        for f in files:
            if is_image_file(f):
                images.append(f)
            else:
                self.problem(f"{f}: not an image file (extension '{f.suffix}'); remove it from "
                             f"the data folder (supported: {', '.join(IMAGE_EXTENSIONS)})")
        return images

    def check_image(self, path: Path) -> tuple[dict | None, list[str]]:
        probs = []
        try:
            img = read_image(path, self.ndim, self.channels, self.channel_axis)
        except BioflowError as exc:
            return None, [str(exc)]
        if img.shape[-1] != self.channels:
            probs.append(f"{path}: has {img.shape[-1]} channel(s) (shape {img.shape[:-1]} x "
                         f"{img.shape[-1]}) but data.channels is {self.channels}; fix "
                         f"data.channels / data.channel_axis or convert the file")
        else:
            self._note_conversion(path)
        if np.issubdtype(img.dtype, np.floating) or np.issubdtype(img.dtype, np.complexfloating):
            if not np.isfinite(img).all():
                probs.append(f"{path}: holds NaN or Inf values; fix or remove the image")
        if self.min_size is not None and any(s < m for s, m in zip(img.shape[:-1], self.min_size)):
            self.adapted["padded"].append(_abs(path))
        entry = {"path": _abs(path), "shape": [int(s) for s in img.shape], "dtype": img.dtype.name}
        return entry, probs

    def _note_conversion(self, path: Path) -> None:
        """Record a colour conversion bioflow.io applied while reading (the file stores another
        channel count than data.channels): read the header again without a channel count."""
        try:
            stored = image_info(path, self.ndim, None, self.channel_axis)[0][-1]
        except BioflowError:
            return  # the layout needs data.channels to be read at all: nothing was converted
        if stored != self.channels:
            kind = "colour_to_grey" if self.channels == 1 and stored in (3, 4) else "alpha_dropped"
            self.adapted[kind].append(_abs(path))  # list.append: atomic under the GIL (threads)

    def check_mask(self, path: Path, image_shape) -> tuple[dict | None, list[str]]:
        try:
            mask = read_mask(path, self.ndim)
        except BioflowError as exc:
            return None, [str(exc)]
        probs = []
        info = {"mask": _abs(path), "mask_shape": [int(s) for s in mask.shape],
                "mask_dtype": mask.dtype.name}
        if image_shape is not None and tuple(mask.shape) != tuple(image_shape[:-1]):
            probs.append(f"{path}: mask shape {tuple(mask.shape)} differs from its image's "
                         f"{tuple(image_shape[:-1])}; masks must match their image pixel for pixel")
        if not np.issubdtype(mask.dtype, np.integer):
            probs.append(f"{path}: mask dtype {mask.dtype} is not integer; save masks as "
                         f"integer label images (uint8 / uint16)")
            return info, probs
        if mask.size and mask.min() < 0:
            probs.append(f"{path}: mask holds negative values; class ids start at 0")
        if self.mask_classes and mask.size:
            # the classes an image holds (patch classification stratifies its split by them)
            info["mask_values"] = [int(v) for v in np.unique(mask)[:256]]
        if self.mask_classes and self.mask_transform == "none" and mask.size:
            top = int(mask.max())
            if top >= self.n_classes:
                probs.append(f"{path}: mask holds value {top} >= model.n_classes={self.n_classes} "
                             f"(class ids must be 0..{self.n_classes - 1}); set model.n_classes, or "
                             f"data.mask_transform: foreground / boundary_interior for instance masks")
        return info, probs

    def run_parallel(self, fn, items) -> list:
        """Apply ``fn`` (returning (result, problems)) to items on a few threads, in order."""
        if not items:
            return []
        prog = progress.Progress(f"validate_{self.part}", len(items), "files")

        def one(it):
            res = fn(*it) if isinstance(it, tuple) else fn(it)
            prog.update(1)  # from worker threads: a late count only shifts a line, never loses one
            return res
        with ThreadPoolExecutor(_THREADS) as pool:
            results = list(pool.map(one, items))
        prog.close()
        out = []
        for res, probs in results:
            self.problems.extend(probs)
            out.append(res)
        return out

    # --- classification ------------------------------------------------------------------

    def scan_classes(self, split: str, root: Path, flat: bool):
        """Image files per class folder: ``{class: [paths]}``, or ``{None: [paths]}`` when
        ``flat`` (unlabelled, or labels from a CSV)."""
        if flat:
            return {None: self.non_images(_files(root, self.problem))}
        loose = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.name.lower() not in IGNORED_FILES)
        if loose:
            # not in any class folder, so not data (real sets ship README / overview figures
            # there); listed in the manifest and logged rather than failing the run
            log.warning("%s: %d file(s) outside the class folders ignored: %s", root, len(loose),
                        ", ".join(p.name for p in loose[:10]))
            self.adapted["ignored"].extend(_abs(p) for p in loose)
        per_class = {}
        _case_clashes(root, [d.name for d in _subdirs(root)], self.problem)
        for d in _subdirs(root):
            images = self.non_images(_files(d, self.problem))
            if not images:
                self.problem(f"{d}: empty class folder (no images); add images or remove the folder")
            per_class[d.name] = images
        if not per_class:
            self.problem(f"{root}: no class folders; classification data is {split}/<class>/<image>")
        return per_class

    # --- segmentation ----------------------------------------------------------------------

    def pair(self, split: str, images: list[Path], masks: list[Path], where: str) -> list[tuple]:
        """Pair images and masks by file name (stem); report every unpaired or misnamed file."""
        dup = set()
        for files in (images, masks):
            by_stem: dict[str, list[Path]] = {}
            for f in files:
                by_stem.setdefault(_pair_stem(f), []).append(f)
            for stem, same in by_stem.items():
                if len(same) > 1:  # one would be paired, the others dropped without a word
                    dup.add(stem)
                    self.problem(f"{same[0]}: {len(same)} files named {stem}.* in {same[0].parent} "
                                 f"({', '.join(f.name for f in same)}); keep one per name")
        by_stem_m = {_pair_stem(m): m for m in masks}
        stems_i = {_pair_stem(i) for i in images}
        pairs, lone_i = [], []
        for i in images:
            stem = _pair_stem(i)
            if stem in dup:
                continue  # reported above; pairing it would only add follow-on errors
            m = by_stem_m.get(stem)
            if m is None:
                lone_i.append(i)
            else:
                pairs.append((i, m))
        lone_m = [m for m in masks if _pair_stem(m) not in stems_i]
        if lone_i and len(lone_i) == len(lone_m):
            # sorted-order pairing would pair these: say so, naming both files
            for i, m in zip(lone_i, lone_m):
                self.problem(f"{i}: paired by sorted order with mask {m} but the names differ; "
                             f"give each mask its image's file name")
        else:
            for i in lone_i:
                self.problem(f"{i}: image without a mask in {where} (expected a mask named "
                             f"{i.stem}.*); add the mask or remove the image")
            for m in lone_m:
                self.problem(f"{m}: mask without an image (no {m.stem}.* among the images); "
                             f"add the image or remove the mask")
        return pairs

    def check_pair(self, img: Path, mask: Path | None):
        entry, probs = self.check_image(img)
        if entry is None or mask is None:
            if entry is not None:
                entry.update({"mask": None, "mask_shape": None})
            return entry, probs
        info, mprobs = self.check_mask(mask, entry["shape"])
        if info is None:
            return None, probs + mprobs
        entry.update(info)
        return entry, probs + mprobs


def _pair_stem(p: Path) -> str:
    stem = p.name
    for ext in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    return stem


def _csv_table(path, file_column: str, what: str):
    """(table indexed by file value, value columns) for labels_csv / metadata_csv."""
    import pandas as pd
    path = Path(path)
    if not path.is_file():
        raise BioflowError(f"{path}: file not found ({what}); check the path")
    try:
        table = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001
        raise BioflowError(f"{path}: cannot read the CSV ({exc}); check {what}") from None
    col = file_column if file_column in table.columns else table.columns[0]
    table[col] = table[col].astype(str).str.strip()
    values = [c for c in table.columns if c != col]
    if not values:
        raise BioflowError(f"{path}: no columns besides the file column '{col}' ({what})")
    return table, col, values


def _row_lookup(table, col) -> dict:
    index = {}
    names = Counter(Path(v).name for v in table[col])
    for i, v in enumerate(table[col]):
        v = v.replace("\\", "/").removeprefix("./")
        index.setdefault(v, i)
        if names[Path(v).name] == 1:
            index.setdefault(Path(v).name, i)
    return index


def _find_row(index: dict, path: Path, split_root: Path) -> int | None:
    rel = path.relative_to(split_root).as_posix()
    for key in (_abs(path), rel, f"{split_root.name}/{rel}", path.name):
        if key in index:
            return index[key]
    return None


def _split_val(entries: list[dict], frac: float, seed: int, stratify: bool):
    """(train, val) entries: a seeded, stratified-when-possible split keeping sorted order."""
    from sklearn.model_selection import train_test_split
    n = len(entries)
    if frac <= 0 or n == 0:
        return entries, []
    if n < 2:
        raise BioflowError(f"data.val_split: only {n} training image(s), nothing to split off; "
                           f"add images or give data.val")
    idx = np.arange(n)
    labels = [e.get("label") for e in entries]
    strat = labels if stratify and all(isinstance(v, int) for v in labels) else None
    try:
        tr, va = train_test_split(idx, test_size=frac, random_state=seed, shuffle=True, stratify=strat)
    except ValueError:
        # too few images of some class to stratify: fall back to a plain seeded split
        log.warning("validation split: cannot stratify (a class has too few images); splitting unstratified")
        tr, va = train_test_split(idx, test_size=frac, random_state=seed, shuffle=True)
    if len(tr) == 0:
        tr, va = va[:-1], va[-1:]
    return [entries[i] for i in sorted(tr)], [entries[i] for i in sorted(va)]


def _split_folds(entries: list[dict], k: int, seed: int, stratify: bool) -> list[dict]:
    """Cross-validation: ``entries`` (train + val pooled) each with its ``fold`` 1..k, a seeded
    k-fold split, stratified by class when every class has at least k images (as _split_val)."""
    from sklearn.model_selection import KFold, StratifiedKFold
    n = len(entries)
    if n < k:
        raise BioflowError(f"data.cv_folds: {k} folds need at least {k} training images, found {n}; "
                           f"lower data.cv_folds or add images")
    labels = [e.get("label") for e in entries]
    idx = np.arange(n)
    if stratify and all(isinstance(v, int) for v in labels) and min(Counter(labels).values()) >= k:
        parts = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(idx, labels)
    else:
        if stratify:
            log.warning("cross-validation folds: cannot stratify (a class has fewer than %d images); "
                        "splitting unstratified", k)
        parts = KFold(n_splits=k, shuffle=True, random_state=seed).split(idx)
    fold = np.zeros(n, dtype=int)
    for i, (_, held_out) in enumerate(parts, start=1):
        fold[held_out] = i
    return [{**e, "fold": int(f)} for e, f in zip(entries, fold)]


def _counts(entries: list[dict], seg_like: bool) -> dict:
    if seg_like:
        return {"images": len(entries), "with_mask": sum(1 for e in entries if e.get("mask"))}
    c = Counter(e.get("class_name") or "unlabelled" for e in entries)
    return {"images": len(entries), **dict(sorted(c.items()))}


def scan_pairs(ck: Checker, split: str, root: Path) -> list[dict]:
    x, y = root / "x", root / "y"
    need_masks = split != "test" or ck.test_has_labels
    if not x.is_dir():
        ck.problem(f"{x}: folder not found; segmentation data is {split}/x/<image> + {split}/y/<mask>")
        return []
    images = ck.non_images(_files(x, ck.problem))
    if not images:
        ck.problem(f"{x}: no images; add the {split} images (masks go to {y})")
    if not y.is_dir():
        if need_masks:
            ck.problem(f"{y}: folder not found; every {split} image needs a mask in {y}"
                       + (" (or set data.test_has_labels: false)" if split == "test" else ""))
        pairs = [(i, None) for i in images]
    else:
        pairs = ck.pair(split, images, ck.non_images(_files(y, ck.problem)), y)
    return [e for e in ck.run_parallel(ck.check_pair, pairs) if e is not None]


def scan_class_pairs(ck: Checker, split, per_class, classes, labelled) -> list[dict]:
    """Patch classification: every image of each class folder with its defect mask."""
    items = []
    for cls, files in per_class.items():
        files = list(files)
        folder = files[0].parent if files else None
        if cls is not None and files:
            base = next((p for p in files[0].parents if p.name == cls), folder)
            xs = [f for f in files if f.parent.name == "x"]
            ys = [f for f in files if f.parent.name == "y"]
            if xs or ys:
                pairs = ck.pair(split, xs, ys, base / "y")
            else:
                pairs = side_by_side(ck, files)
        else:
            pairs = side_by_side(ck, files, need_masks=labelled)
        items.extend((i, m, cls) for i, m in pairs)
    entries = ck.run_parallel(ck.check_pair, [(i, m) for i, m, _ in items])
    return label_entries(entries, [cls for _, _, cls in items], classes)


def scan_images_masks(ck: Checker, split: str, root: Path, mask_extension: str) -> list[dict]:
    """quadra's layout: ``root/images/<name>.<ext>`` + ``root/masks/<name><mask_extension>.*``;
    an image without a mask is wholly good (its entry's mask is None)."""
    images_dir, masks_dir = root / "images", root / "masks"
    images = ck.non_images(_files(images_dir))
    if not images:
        ck.problem(f"{images_dir}: no images")
    masks = ck.non_images(_files(masks_dir)) if masks_dir.is_dir() else []
    by_stem: dict[str, list[Path]] = {}
    for m in masks:
        by_stem.setdefault(_pair_stem(m), []).append(m)
    pairs, used = [], set()
    for i in images:
        key = _pair_stem(i) + mask_extension
        found = by_stem.get(key, [])
        if len(found) > 1:
            ck.problem(f"{i}: {len(found)} masks match it ({', '.join(f.name for f in found)}); keep one")
            continue
        pairs.append((i, found[0] if found else None))
        used.add(key)
    for stem, ms in by_stem.items():
        if stem not in used:
            ck.problem(f"{ms[0]}: mask without an image (no image named {stem[:len(stem) - len(mask_extension)] if mask_extension and stem.endswith(mask_extension) else stem}.* in {images_dir}); "
                       f"check patches.mask_extension ('{mask_extension}') or remove the mask")
    return [e for e in ck.run_parallel(ck.check_pair, pairs) if e is not None]


def split_fractions(entries: list[dict], strata: list[int], val_size: float, test_size: float,
                    seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, val, test) entries: seeded fractions, stratified by ``strata`` when every
    stratum has enough images (else unstratified), sorted order kept."""
    from sklearn.model_selection import train_test_split
    n = len(entries)
    idx = np.arange(n)
    held = val_size + test_size
    if held <= 0 or n < 2:
        return entries, [], []

    def cut(ids, frac, labels):
        k = int(round(frac * len(ids)))
        if k <= 0:
            return ids, ids[:0]
        if k >= len(ids):
            return ids[:0], ids
        try:
            return train_test_split(ids, test_size=k, random_state=seed, shuffle=True, stratify=labels)
        except ValueError:  # a stratum too small to split
            return train_test_split(ids, test_size=k, random_state=seed, shuffle=True)

    strata = np.asarray(strata)
    tr, rest = cut(idx, held, strata)
    va, te = (rest, rest[:0]) if test_size <= 0 else (rest[:0], rest) if val_size <= 0 else \
        cut(rest, test_size / held, strata[rest])
    if len(tr) == 0:
        raise BioflowError(f"patches.val_size / patches.test_size: nothing left to train on with {n} "
                           f"image(s); lower them")
    pick = lambda ids: [entries[i] for i in sorted(ids)]  # noqa: E731
    return pick(tr), pick(va), pick(te)


def label_entries(entries: list[dict | None], class_names: list[str | None], classes: list[str]) -> list[dict]:
    """Entries that passed their checks (None = a problem was recorded), with label and class
    name set; a class not in ``classes`` (unlabelled test data) gets None for both."""
    out = []
    for e, cls in zip(entries, class_names):
        if e is None:
            continue
        known = cls is not None and cls in classes
        e["label"] = classes.index(cls) if known else None
        e["class_name"] = cls if known else None
        out.append(e)
    return out


def side_by_side(ck: Checker, files: list[Path], need_masks: bool = True) -> list[tuple]:
    """Pair ``a.jpg`` + ``a.png`` (PNG = mask) or ``a.tif`` + ``a_mask.tif`` in one folder."""
    groups: dict[tuple, list[Path]] = {}
    for f in files:
        stem = _pair_stem(f)
        for suf in MASK_SUFFIXES:
            if stem.lower().endswith(suf):
                stem = stem[: -len(suf)]
                break
        groups.setdefault((f.parent, stem), []).append(f)
    pairs = []
    for (_, stem), group in sorted(groups.items()):
        masks = [f for f in group if _pair_stem(f) != stem]  # has a mask suffix
        if not masks and len(group) == 2:
            masks = [f for f in group if f.suffix.lower() == ".png"]
            if len(masks) != 1:
                masks = []
        images = [f for f in group if f not in masks]
        if len(images) == 1 and len(masks) == 1:
            pairs.append((images[0], masks[0]))
        elif len(images) == 1 and not masks:
            if need_masks:
                ck.problem(f"{images[0]}: image without a defect mask (expected {stem}.png or "
                           f"{stem}_mask.* beside it); add the mask or remove the image")
            else:
                pairs.append((images[0], None))
        elif not images and masks:
            ck.problem(f"{masks[0]}: mask without an image; add the image or remove the mask")
        else:
            ck.problem(f"{group[0]}: ambiguous files {[g.name for g in group]} for one image; keep "
                       f"one image and one mask per name")
    return pairs


def multilabel_classes(ck: Checker, cfg: dict) -> list[str]:
    file_col = cfg["data"]["csv_options"]["file_column"]
    try:
        _, _, labels = _csv_table(cfg["data"]["labels_csv"], file_col, "data.labels_csv")
    except BioflowError as exc:
        ck.problem(str(exc))
        return []
    if len(labels) != ck.n_classes:
        ck.problem(f"{cfg['data']['labels_csv']}: {len(labels)} label columns but model.n_classes "
                   f"is {ck.n_classes}; set model.n_classes: {len(labels)}")
    return [str(c) for c in labels]


def attach_csv(ck: Checker, cfg: dict, splits, roots, kind: str):
    """Add each image's multi-label vector or metadata features from its CSV row."""
    key = "labels_csv" if kind == "labels" else "metadata_csv"
    path = cfg["data"][key]
    file_col = cfg["data"]["csv_options"]["file_column"]
    try:
        table, col, columns = _csv_table(path, file_col, f"data.{key}")
    except BioflowError as exc:
        ck.problem(str(exc))
        return None
    import pandas as pd
    values = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    index = _row_lookup(table, col)
    for split, entries in splits.items():
        unlabelled_ok = kind == "labels" and split == "test" and not ck.test_has_labels
        for e in entries:
            row = _find_row(index, Path(e["path"]), Path(_abs(roots[split])))
            if row is None:
                if not unlabelled_ok:
                    ck.problem(f"{e['path']}: no row in {path} (data.{key}, file column '{col}'); "
                               f"add one")
                if kind == "labels":
                    e["label"] = None
                continue
            v = values[row]
            if kind == "labels":
                if not np.isin(v, (0, 1)).all():
                    ck.problem(f"{e['path']}: labels in {path} row {row + 2} are not all 0/1; "
                               f"give 0 or 1 in every label column")
                    continue
                e["label"] = [int(a) for a in v]
                e["class_name"] = None
            else:
                if not np.isfinite(v).all():
                    bad = [c for c, a in zip(columns, v) if not np.isfinite(a)]
                    ck.problem(f"{e['path']}: non-numeric or empty metadata in {path} row "
                               f"{row + 2} (columns {bad}); give numbers")
                    continue
                e["metadata"] = [float(a) for a in v]
    return [str(c) for c in columns]


# --- the parts of a dataset: train + val (what training reads), test (what prediction reads).
# Two manifests, so a test-set change never touches what training depends on.
PARTS = {"train": ("train", "val"), "test": ("test",)}


def resolve_roots(ck: Checker, cfg, splits, folders: str | None = None) -> dict[str, Path]:
    """Existing folders of ``splits`` (each missing configured one is a problem). With
    ``data.csv`` the folders are csv_to_folders' output ``folders/<split>`` unless set."""
    csv_mode = bool(cfg["data"]["csv"])
    roots: dict[str, Path] = {}
    for split in splits:
        given = cfg["data"][split]
        generated = csv_mode and given is None  # csv_to_folders output: val / test may be absent
        p = str(Path(folders) / split) if generated and folders else given
        if not p:
            if split == "train":
                ck.problem("data.train: missing; give the training folder (or data.csv)")
            continue
        if Path(p).is_dir():
            roots[split] = Path(p)
        elif not generated or split == "train":
            ck.problem(f"data.{split}: folder {p} not found; check the path"
                       + (" (run csv_to_folders first)" if generated else " or set it to null"))
    return roots


def adaptations(ck: Checker) -> dict:
    """The adaptations of the scanned files: a warning per kind, or with ``data.strict`` a
    problem per kind; returns the manifest's ``adaptations`` (kind -> what + every file)."""
    out = {}
    for kind, (what, fix) in ADAPTATIONS.items():
        files = sorted(ck.adapted[kind])
        if not files:
            continue
        what = what.format(min_size=list(ck.min_size or ()))
        named = ", ".join(files[:NAMED]) + (f" and {len(files) - NAMED} more" if len(files) > NAMED else "")
        if ck.strict:
            ck.problem(f"{files[0]}: {len(files)} {what} ({named}); data.strict is true: {fix}, "
                       f"or set data.strict: false to accept this")
        else:
            log.warning("%d %s: %s (data.strict: true makes this an error)", len(files), what, named)
        out[kind] = {"what": what, "files": files}
    return out


def raise_problems(ck: Checker, part: str) -> None:
    if ck.problems:
        n = len(ck.problems)
        shown = ck.problems[:MAX_LISTED]
        if n > MAX_LISTED:
            shown.append(f"... and {n - MAX_LISTED} more")
        raise BioflowError(f"validate_{part}: {n} problem(s) in the data", shown)


def assemble(ck: Checker, cfg, part: str, roots: dict, classes: list[str], splits: dict,
             extra: dict, workflow: str, masks: bool, stratify: bool) -> dict:
    """The manifest of one part, after every problem was collected (raised here, all at once)."""
    if part == "train" and "train" in roots and not splits.get("train"):
        ck.problem(f"{roots['train']}: no training images found; add images")
    adapted = adaptations(ck)
    raise_problems(ck, part)
    head = {"workflow": workflow, "ndim": ck.ndim, "channels": ck.channels, "channel_axis": ck.channel_axis,
            "classes": classes, "n_classes": ck.n_classes,
            "mask_transform": ck.mask_transform if masks else None, "part": part}
    if part == "train":
        seed = int(cfg["experiment"]["split_seed"])
        frac = float(cfg["data"]["val_split"])
        # a workflow may split val off itself (patch classification: quadra's val_size)
        val_source = "path" if "val" in roots else "workflow" if "val" in splits else "split"
        folds = cfg["data"]["cv_folds"]
        if folds:  # every train and val image in one pool, each in its fold (see manifest.for_run)
            val_source = "cv"
            splits["train"] = _split_folds(splits.get("train", []) + splits.pop("val", []), int(folds), seed,
                                           stratify)
            head["cv_folds"] = int(folds)
        elif val_source == "split":
            splits["train"], splits["val"] = _split_val(splits.get("train", []), frac, seed, stratify)
        head.update({"val_source": val_source, "val_split": frac, "split_seed": seed})
    else:
        head["test_has_labels"] = ck.test_has_labels
    names = PARTS[part]
    for s in names:
        splits.setdefault(s, [])
    return {**head, **extra,
            "data_paths": {s: (_abs(roots[s]) if s in roots else None) for s in names},
            "ignored_files": adapted.get("ignored", {}).get("files", []),
            "adaptations": adapted,
            "counts": {s: _counts(splits[s], masks) for s in names},
            "splits": {s: splits[s] for s in names}}
