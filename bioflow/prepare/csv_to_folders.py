"""Stage ``csv_to_folders``: a CSV or a MedMNIST ``.npz`` -> the class-folder tree.

Output: ``out_dir/{train,val,test}/<class>/<file>`` -- only the splits present in the input
(a CSV without a split column puts everything in ``train``; ``validate_dataset`` then splits
a validation set off train and treats the missing test folder as "no test").

CSV (``data.csv``, options under ``data.csv_options``): ``file_column`` holds image paths
relative to ``image_root`` (default: the CSV's folder), ``label_column`` the class (a name,
or an index mapped through ``class_names``), ``split_column`` train/val/test (also
accepted: valid, validation, dev, eval). Files are copied, never moved.

MedMNIST ``.npz``: ``<split>_images`` / ``<split>_labels`` arrays; 2D samples become PNG
(uint8; TIFF for other dtypes), 3D samples TIFF. Class folders are named from
``class_names`` or the label index.

Idempotent: the tree is built in a hidden temporary folder next to ``out_dir`` and swapped in
at the end, so a rerun produces the same tree and a killed run leaves the previous one.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from bioflow.errors import BioflowError
from bioflow.io import atomic_dir, write_image

log = logging.getLogger(__name__)

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test", "eval": "test"}


def _safe_name(text: str) -> str:
    """A folder name from a label: path separators and leading dots removed."""
    name = str(text).strip().replace("/", "_").replace("\\", "_").lstrip(".")
    return name or "_"


def _class_name(label, class_names, where) -> str:
    if class_names:
        try:
            idx = int(label)
        except (TypeError, ValueError):
            return _safe_name(label)  # already a name
        if not 0 <= idx < len(class_names) or float(label) != idx:
            raise BioflowError(f"{where}: label {label!r} has no entry in data.csv_options.class_names "
                               f"({len(class_names)} names); fix the label or the names")
        return _safe_name(class_names[idx])
    if isinstance(label, (float, np.floating)) and float(label).is_integer():
        label = int(label)
    return _safe_name(label)


def _plan_csv(cfg: dict) -> list[tuple[str, str, Path, str]]:
    """(split, class, source file, output name) for every CSV row; all problems in one error."""

    d = cfg["data"]
    opts = d["csv_options"]
    csv_path = Path(d["csv"])
    file_col, label_col = opts["file_column"], opts["label_column"]
    split_col = opts["split_column"]
    root = Path(opts["image_root"]) if opts["image_root"] else csv_path.parent
    try:
        table = pd.read_csv(csv_path, dtype={file_col: str})
    except Exception as exc:  # noqa: BLE001
        raise BioflowError(f"{csv_path}: cannot read the CSV ({exc}); check data.csv") from None
    for key, col in (("file_column", file_col), ("label_column", label_col)):
        if col not in table.columns:
            raise BioflowError(f"{csv_path}: no column '{col}' (data.csv_options.{key}); "
                               f"columns are {list(table.columns)}")
    if split_col and split_col not in table.columns:
        log.info("%s: no split column '%s'; every row goes to train", csv_path, split_col)
        split_col = None
    problems, plan = [], []
    for i, row in table.iterrows():
        where = f"{csv_path} row {i + 2}"
        file = row[file_col]
        if not isinstance(file, str) or not file.strip():
            problems.append(f"{where}: empty '{file_col}'")
            continue
        label = row[label_col]
        if label is None or (isinstance(label, float) and np.isnan(label)):
            problems.append(f"{where}: empty '{label_col}' for {file}")
            continue
        split = "train"
        if split_col:
            split = SPLIT_ALIASES.get(str(row[split_col]).strip().lower())
            if split is None:
                problems.append(f"{where}: split {row[split_col]!r} is not train/val/test; use one "
                                f"of {', '.join(sorted(SPLIT_ALIASES))}")
                continue
        src = Path(file) if Path(file).is_absolute() else root / file
        if not Path(file).is_absolute() and ".." in Path(file.replace("\\", "/")).parts:
            # a relative path is read below image_root only: '../' could reach any file
            problems.append(f"{where}: path {file!r} climbs out of {root} with '..'; give paths "
                            f"inside it, absolute paths, or set data.csv_options.image_root")
            continue
        if not src.is_file():
            problems.append(f"{src}: file listed in {csv_path} (row {i + 2}) not found; "
                            f"check data.csv_options.image_root")
            continue
        try:
            cls = _class_name(label, opts["class_names"], where)
        except BioflowError as exc:
            problems.append(str(exc))
            continue
        plan.append((split, cls, src, file))
    if problems:
        raise BioflowError(f"{csv_path}: {len(problems)} problem(s) in the CSV", problems)
    if not plan:
        raise BioflowError(f"{csv_path}: the CSV lists no images; check data.csv")
    # output names: the file name, or the relative path flattened where names collide
    counts = Counter((s, c, Path(f).name) for s, c, _, f in plan)
    return [(s, c, src, Path(f).name if counts[(s, c, Path(f).name)] == 1
             else _safe_name(Path(f).as_posix().replace("/", "__")))
            for s, c, src, f in plan]


def _write_csv(plan, tmp: Path) -> dict:
    counts: dict = defaultdict(Counter)
    for split, cls, src, name in plan:
        dst = tmp / split / cls / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)  # copy2 keeps mtimes: reruns give byte- and time-identical trees
        counts[split][cls] += 1
    return counts


def _write_npz(cfg: dict, tmp: Path) -> dict:

    d = cfg["data"]
    npz_path = Path(d["csv"])
    class_names = d["csv_options"]["class_names"]
    ndim = cfg["experiment"]["ndim"]
    try:
        data = np.load(npz_path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise BioflowError(f"{npz_path}: cannot read the .npz ({exc}); check data.csv") from None
    counts: dict = defaultdict(Counter)
    with data:
        splits = [s for s in ("train", "val", "test") if f"{s}_images" in data.files]
        if not splits:
            raise BioflowError(f"{npz_path}: no '<split>_images' arrays (MedMNIST layout: "
                               f"train_images, train_labels, ...); found {data.files}")
        for split in splits:
            if f"{split}_labels" not in data.files:
                raise BioflowError(f"{npz_path}: '{split}_images' without '{split}_labels'; add the "
                                   f"labels array (one label per image)")
            images, labels = data[f"{split}_images"], np.asarray(data[f"{split}_labels"])
            if labels.ndim == 2 and labels.shape[1] == 1:
                labels = labels[:, 0]
            if labels.ndim != 1:
                raise BioflowError(f"{npz_path}: '{split}_labels' has shape {labels.shape}: "
                                   f"multi-label .npz files are not class folders; export a "
                                   f"data.labels_csv instead")
            if len(labels) != len(images):
                raise BioflowError(f"{npz_path}: {len(images)} {split} images but {len(labels)} labels")
            sample_ndim = images.ndim - 1
            rgb = sample_ndim == 3 and images.shape[-1] in (3, 4) and ndim == 2
            as_png = images.dtype == np.uint8 and (sample_ndim == 2 or rgb)
            ext = ".png" if as_png else ".tif"
            width = len(str(len(images) - 1))
            for i, (img, lab) in enumerate(zip(images, labels)):
                cls = _class_name(lab, class_names, f"{npz_path} {split}_labels[{i}]")
                write_image(tmp / split / cls / f"{split}_{i:0{width}d}{ext}", img,
                            channels_last=rgb or sample_ndim == ndim + 1)
                counts[split][cls] += 1
    return counts


def run(cfg: dict, out_dir) -> dict:
    """Stage csv_to_folders. Returns ``{split: {class: count}}`` (also logged)."""
    d = cfg["data"]
    if not d["csv"]:
        raise BioflowError("data.csv: not set; csv_to_folders needs a CSV or MedMNIST .npz")
    src = Path(d["csv"])
    if not src.is_file():
        raise BioflowError(f"{src}: file not found (data.csv); give the path of the CSV or .npz")
    plan = None if src.suffix.lower() == ".npz" else _plan_csv(cfg)  # all CSV errors first
    with atomic_dir(out_dir) as tmp:
        counts = _write_npz(cfg, tmp) if plan is None else _write_csv(plan, tmp)
    result = {s: dict(sorted(counts[s].items())) for s in ("train", "val", "test") if s in counts}
    for split, per_class in result.items():
        log.info("csv_to_folders %s: %d images: %s", split, sum(per_class.values()),
                 ", ".join(f"{c}={n}" for c, n in per_class.items()))
    return result
