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
