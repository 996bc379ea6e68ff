"""The per-stage config contract: a stage sees only its slice of the config.

Every stage declares the dotted config keys it reads (next to its function, in its workflow
module). The Snakemake rule passes exactly that slice through ``params:`` — Snakemake reruns a
job when its params change, so a key change reruns exactly the stages that read it — and the
stage gets it as a :class:`StageConfig`, where reading any other key is an error naming the
stage and the key instead of a silent dependency the rerun logic cannot see.

Two kinds of keys:

* ``keys``: what the stage's output depends on. A change reruns the stage.
* ``runtime`` keys: how the stage runs, not what it produces (``train.num_workers``,
  ``train.n_sample_images``, ...). They reach the stage through an :class:`Untracked` param,
  which Snakemake cannot represent and so leaves out of its rerun check, by design.

Bottom layer: imports only :mod:`bioflow.errors`.
"""

from __future__ import annotations

import copy
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from bioflow.errors import BioflowError

# Free-form mappings inside the config (constructor keyword arguments): plain dicts whose
# keys are the user's, so ``.get`` on them keeps its usual meaning.
FREE_FORM_SUFFIX = "kwargs"


def slice_config(cfg: Mapping, keys: Iterable[str], exclude: Iterable[str] = ()) -> dict:
    """The nested sub-dict of ``cfg`` holding only ``keys`` (dotted; a section name takes the
    whole section) minus ``exclude``, with sorted keys: Snakemake compares params by their
    text, so the same keys in another YAML order must not rerun a stage."""
    out: dict = {}
    for dotted in keys:
        parts = dotted.split(".")
        src, dst = cfg, out
        for i, part in enumerate(parts):
            if not isinstance(src, Mapping) or part not in src:
                raise BioflowError(f"stage key '{dotted}': not in the config schema; fix the stage's "
                                   f"key list in its workflow module")
            if i == len(parts) - 1:
                dst[part] = copy.deepcopy(src[part])
            else:
                src = src[part]
                dst = dst.setdefault(part, {})
    for dotted in exclude:
        *path, last = dotted.split(".")
        node = out
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return _key_sorted(out)


def _key_sorted(value):
    if isinstance(value, dict):
        return {k: _key_sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_key_sorted(v) for v in value]
    return value


class StageConfig(dict):
    """A read-only view of one stage's config slice.

    Reading a key outside the slice raises :class:`BioflowError` naming the stage and the key,
    also through ``.get``: every key of a validated slice is present (defaults filled by the
    schema), so a ``.get(key, default)`` in stage code could only hide a missing declaration
    or repeat a default. A deep copy or pickle of it is a plain dict (checkpoints, JSON).
    """

    def __init__(self, data: Mapping, stage: str, prefix: str = ""):
        super().__init__()
        self._stage, self._prefix = stage, prefix
        for k, v in data.items():
            wrap = isinstance(v, Mapping) and not str(k).endswith(FREE_FORM_SUFFIX)
            dict.__setitem__(self, k, StageConfig(v, stage, f"{prefix}{k}.") if wrap else v)

    def __missing__(self, key):
        raise BioflowError(f"stage '{self._stage}': reads config key '{self._prefix}{key}', which is "
                           f"not in its slice; add it to the stage's keys in its workflow module")

    def get(self, key, default=None):  # noqa: ARG002 - a default would hide an undeclared key
        return self[key]

    def _readonly(self, *args, **kwargs):
        raise BioflowError(f"stage '{self._stage}': the config is read-only inside a stage; copy it "
                           f"with copy.deepcopy() to change it")

    __setitem__ = __delitem__ = update = pop = popitem = setdefault = clear = _readonly

    def to_dict(self) -> dict:
        return {k: (v.to_dict() if isinstance(v, StageConfig) else copy.deepcopy(v)) for k, v in self.items()}

    def __deepcopy__(self, memo):
        return self.to_dict()

    def __copy__(self):
        return self.to_dict()

    def __reduce__(self):
        return (dict, (self.to_dict(),))


class Untracked:
    """A ``params:`` value Snakemake cannot represent, hence leaves out of its rerun check
    (``snakemake.persistence``: unrepresentable params are skipped). Carries the runtime keys."""

    def __init__(self, value: dict):
        self.value = value

    def __repr__(self) -> str:  # shown in `snakemake -p` / logs
        return f"Untracked({self.value!r})"


@dataclass
class Job:
    """What a stage function gets besides its config: named input and output paths, the
    run id (per-run stages), extra values from the rule, and the cores it may use. Built from
    the ``snakemake`` object by :func:`bioflow.workflows.run_stage`, or by hand without
    Snakemake."""

    input: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    run_id: int | None = None
    threads: int = 1


def setup_logging(log_file: str | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, for a Snakemake job, into the rule's log file."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=handlers, force=True)
