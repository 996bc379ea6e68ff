"""What a killed prediction finished, kept for the rerun: one mechanism for every workflow's
``predict`` and for each shard of a sharded prediction.

A prediction records each finished unit of work (a segmentation image, a classification batch)
in ``run_dir/.predict_done/<key>/``, after the unit's outputs are complete; ``<key>`` hashes the
checkpoint file and every setting that changes the outputs, so a rerun with other settings
predicts afresh. Snakemake deletes the declared outputs of a job that did not finish, not this
hidden folder, so the rerun (the same command) takes the recorded units from there and predicts
only the rest. The folder is removed once the prediction is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from bioflow.io import read_json, write_json

FOLDER = ".predict_done"


class Done:
    """The finished units of one prediction: ``<dir>/<name>.json`` each, written atomically."""

    def __init__(self, run_dir, ckpt_path, settings: dict):
        """``ckpt_path``: one checkpoint, or a list of them (an ensemble's models)."""
        paths = list(ckpt_path) if isinstance(ckpt_path, (list, tuple)) else [ckpt_path]
        stats = [(p, os.stat(p)) for p in paths]
        ckpts = [[os.path.abspath(p), st.st_size, st.st_mtime_ns] for p, st in stats]
        what = {"ckpt": ckpts[0] if len(ckpts) == 1 else ckpts, **settings}
        key = hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.dir = Path(run_dir) / FOLDER / key

    @staticmethod
    def name_of(text: str) -> str:
        """A file name for a unit named by ``text`` (e.g. an image path)."""
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def get(self, name: str):
        p = self.path(name)
        return read_json(p) if p.is_file() else None

    def put(self, name: str, value) -> None:
        """Record a unit; call it after the unit's outputs are complete (the record stands for them)."""
        write_json(self.path(name), value)

    def clear(self) -> None:
        """The prediction is complete: its records are no longer needed."""
        shutil.rmtree(self.dir.parent, ignore_errors=True)
