"""Prediction sharded over jobs (``inference.shards: N``): scatter / gather.

Each ``predict_shard`` job predicts a contiguous part of the test images into its own working
folder ``<run>/predict_shards/shard_<k>/`` (the per-image folders and a ``predictions.csv``)
and declares only ``shard_<k>.csv`` beside it, written last. The folder itself is not a
declared output, so a killed shard keeps it, with the records of the units it finished
(:mod:`bioflow.inference.resume`, the mechanism of an unsharded prediction): the rerun predicts
only the rest. The ``predict`` job then gathers the shards into the usual outputs
(predictions.csv, per-image folders as hard links, patch_metrics.json), in manifest order.

Shards cut the test set at multiples of the prediction batch (classification), so every batch
holds the same images as in one job and the outputs are identical to an unsharded run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from bioflow.io import atomic_path, write_json, write_text

log = logging.getLogger(__name__)


def part(n_items: int, unit: int, shard: tuple[int, int] | None) -> slice:
    """The items of shard ``(k, n)``: whole ``unit``s of the ``n_items``, split into ``n``
    contiguous runs as even as possible; every item when ``shard`` is None."""
    if shard is None:
        return slice(0, n_items)
    k, n = shard
    units = -(-n_items // unit)
    a, b = k * units // n, (k + 1) * units // n
    return slice(min(a * unit, n_items), min(b * unit, n_items))


def write_csv(rows: list[dict], path, **to_csv) -> None:
    """``predictions.csv`` of ``rows`` (an empty file for a shard without images)."""
    import pandas as pd
    with atomic_path(path) as tmp:
        if rows:
            pd.DataFrame(rows).to_csv(tmp, index=False, **to_csv)
        else:
            Path(tmp).write_text("")


def _link(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)  # no second copy of large outputs
        except OSError:
            shutil.copyfile(src, tmp)


def gather(shard_csvs: list[str], run_dir, outputs: dict) -> Path:
    """The shards' outputs as one job's: ``outputs["csv"]``, every declared ``*_dir`` folder,
    and ``outputs["patch_metrics"]`` when declared."""
    run_dir = Path(run_dir)
    header, lines, patches, patch_head = None, [], [], None
    for csv in shard_csvs:
        shard_dir = Path(csv).with_suffix("")
        text = Path(csv).read_text()
        if text:
            head, *rows = text.splitlines(keepends=True)
            header = header or head
            # per-image paths of the shard folder -> the run folder's
            lines += [r.replace(f"{shard_dir}/", f"{run_dir}/") for r in rows]
        for name, out in outputs.items():
            if name.endswith("_dir"):
                src = shard_dir / Path(out).name
                Path(out).mkdir(parents=True, exist_ok=True)
                for f in sorted(src.iterdir()) if src.is_dir() else []:
                    _link(f, Path(out) / f.name)
        pm = shard_dir / "patch_metrics.json"
        if "patch_metrics" in outputs and pm.is_file():
            data = json.loads(pm.read_text())
            patches += data["patches"]
            patch_head = data
    write_text(outputs["csv"], (header or "") + "".join(lines))
    if "patch_metrics" in outputs:
        # the shards' fields in their order, with every shard's patches
        head = patch_head or {"patches": []}
        write_json(outputs["patch_metrics"], {k: (patches if k == "patches" else v) for k, v in head.items()})
    log.info("predict: %d shards gathered, %d rows -> %s", len(shard_csvs), len(lines), outputs["csv"])
    return Path(outputs["csv"])
