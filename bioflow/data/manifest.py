"""Reading the manifest written by ``validate_dataset`` (format in ARCHITECTURE.md).

Later stages should go through these helpers so every stage reads files with the same
``ndim`` / ``channels`` / ``channel_axis`` / ``mask_transform`` that were validated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bioflow.errors import BioflowError

SPLITS = ("train", "val", "test")
REQUIRED = ("workflow", "ndim", "channels", "classes", "splits")


def load_manifest(path) -> dict:
    """Read ``prepared/manifest.json``; BioflowError naming the file if absent or malformed."""
    from bioflow.io import read_json
    m = read_json(path)
    missing = [k for k in REQUIRED if not isinstance(m, dict) or k not in m]
    if missing:
        raise BioflowError(f"{path}: not a bioflow manifest (missing {missing}); rerun validate_dataset")
    for s in SPLITS:
        m["splits"].setdefault(s, [])
    m.setdefault("channel_axis", "auto")
    m.setdefault("mask_transform", "none")
    return m


def for_run(manifest: dict, run_id, cv_folds: int | None, path="manifest_train.json") -> dict:
    """The training manifest as run ``run_id`` trains on it. Cross-validation (``cv_folds`` in
    the manifest, from ``data.cv_folds``): run i validates on the entries of fold i and trains
    on the others (the pooled train + val images are all in ``splits.train``, each with its
    ``fold``); otherwise the manifest as it is. ``cv_folds``: the config's ``data.cv_folds``,
    which the manifest must have been made for."""
    k = manifest.get("cv_folds")
    if (k or None) != (cv_folds or None):
        raise BioflowError(f"{path}: made for data.cv_folds: {k} but the config has {cv_folds}; rerun "
                           f"validate_train")
    if not k:
        return manifest
    fold = int(run_id)
    if not 1 <= fold <= int(k):
        raise BioflowError(f"experiment.run_ids: run {run_id} is not a fold of data.cv_folds: {k}; with "
                           f"cross-validation the run ids are 1..{k}")
    pooled = manifest["splits"]["train"]
    splits = {**manifest["splits"], "train": [e for e in pooled if e["fold"] != fold],
              "val": [e for e in pooled if e["fold"] == fold]}
    return {**manifest, "fold": fold, "splits": splits}


def fold_info(manifest: dict) -> dict:
    """A cross-validation run's fold and image counts (for train_summary.json); {} otherwise."""
    if not manifest.get("fold"):
        return {}
    return {"cv_fold": manifest["fold"], "cv_folds": manifest["cv_folds"],
            "n_train": len(manifest["splits"]["train"]), "n_val": len(manifest["splits"]["val"])}


def entries(manifest: dict, split: str) -> list[dict]:
    return list(manifest["splits"].get(split, []))


def read_entry_image(manifest: dict, entry: dict) -> np.ndarray:
    """The entry's image as ``(z,)y,x,c`` in its stored dtype."""
    from bioflow.io import read_image
    return read_image(entry["path"], manifest["ndim"], manifest["channels"],
                      manifest.get("channel_axis", "auto"))


def read_entry_mask(manifest: dict, entry: dict, transform: bool = True) -> np.ndarray:
    """The entry's mask as ``(z,)y,x`` class ids (``data.mask_transform`` applied)."""
    from bioflow.data.masks import apply_mask_transform
    from bioflow.io import read_mask
    if not entry.get("mask"):
        raise BioflowError(f"{entry.get('path')}: this image has no mask in the manifest")
    mask = read_mask(entry["mask"], manifest["ndim"])
    return apply_mask_transform(mask, manifest.get("mask_transform") or "none") if transform else mask


def relative_name(entry: dict) -> str:
    """A stable output name for an entry: its file name (with class folder if any)."""
    p = Path(entry["path"])
    return f"{entry['class_name']}/{p.name}" if entry.get("class_name") else p.name
