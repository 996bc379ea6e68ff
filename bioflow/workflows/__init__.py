"""The workflow registry: ``experiment.workflow`` -> the module implementing it.

Adding a workflow is one new module with a :class:`~bioflow.workflows.base.Workflow` subclass
plus one line in ``_BUILTIN`` (see ARCHITECTURE.md). Only this package compares workflow names;
everything else asks the workflow object.
"""

from __future__ import annotations

import copy
import logging
import os
import sys

from bioflow import config as bfconfig
from bioflow.errors import BioflowError
from bioflow.layout import ENSEMBLE
from bioflow.stage import Job, setup_logging
from bioflow.workflows.base import Workflow, run_id_of, stage
from bioflow.workflows.classification import Classification
from bioflow.workflows.patch_classification import PatchClassification
from bioflow.workflows.segmentation import SemanticSegmentation

__all__ = ["Workflow", "stage", "register", "get", "names", "validate_config", "load", "run_stage"]

log = logging.getLogger("bioflow")

_REGISTRY: dict[str, Workflow] = {}


def register(cls: type[Workflow]) -> type[Workflow]:
    """Register a workflow class under its ``name`` (usable as a decorator)."""
    _REGISTRY[cls.name] = cls()
    return cls


for _cls in (Classification, SemanticSegmentation, PatchClassification):
    register(_cls)


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> Workflow:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BioflowError(f"experiment.workflow: unknown workflow '{name}'; use one of "
                           f"{', '.join(names())}") from None


def validate_config(cfg: dict, source="config") -> Workflow:
    """Schema validation (defaults filled in place) plus the workflow's own checks; returns
    the workflow. A predict-only config (``model.checkpoint``) gets the model's keys from the
    checkpoint here. What the Snakefile and `bioflow check` call."""
    given = copy.deepcopy(cfg)  # what the user wrote, before defaults
    bfconfig.validate(cfg, source=source)
    wf = get(cfg["experiment"]["workflow"])
    problems = wf.from_checkpoint(cfg, given) if cfg["model"]["checkpoint"] else []
    problems += _folds_as_run_ids(wf, cfg, given)
    if cfg["export"]["formats"] and not wf.runs("export", cfg):
        problems.append(f"export.formats: the {wf.name} workflow has no trained model to export yet; "
                        f"remove export.formats")
    if cfg["inference"]["shards"] > 1 and "predict_shard" not in wf.all_stages():
        problems.append(f"inference.shards: the {wf.name} workflow predicts in one job; remove inference.shards")
    if "bioimageio" in cfg["export"]["formats"]:
        if "torchscript" not in cfg["export"]["formats"]:
            problems.append("export.formats: bioimageio packages the TorchScript weights; add torchscript")
        if not cfg["export"]["authors"]:
            problems.append("export.authors: a bioimageio package needs at least one author "
                            "(export.authors: [{name: ...}])")
    problems += wf.check_config(cfg)
    if problems:
        raise BioflowError(f"{source}: invalid config", problems)
    return wf


def _folds_as_run_ids(wf: Workflow, cfg: dict, given: dict) -> list[str]:
    """``data.cv_folds: k``: the run_ids are the folds 1..k (filled in when not given; run i
    validates on fold i, see bioflow.data.manifest.for_run). Returns the problems."""
    k = cfg["data"]["cv_folds"]
    if not k:
        return []
    if "train" not in wf.all_stages():
        return [f"data.cv_folds: the {wf.name} workflow does not train a bioflow model; remove data.cv_folds"
                + (" (patches.cross_validation cross-validates its head)" if "patch_head" in wf.all_stages() else "")]
    if wf.predict_only(cfg):
        return ["data.cv_folds: a predict-only experiment (model.checkpoint) trains nothing; remove data.cv_folds"]
    folds = list(range(1, k + 1))
    if "run_ids" not in (given.get("experiment") or {}):
        cfg["experiment"]["run_ids"] = folds
    elif cfg["experiment"]["run_ids"] != folds:
        return [f"experiment.run_ids: with data.cv_folds: {k} the run ids are the folds {folds}; remove "
                f"experiment.run_ids or set it to {folds}"]
    return []


def load(path, overrides: dict | None = None) -> dict:
    """Read, validate and check an experiment YAML (schema + the workflow's own checks)."""
    cfg = bfconfig.load(path, overrides)
    validate_config(cfg, source=path)
    return cfg


def run_stage(snakemake, stage_name: str) -> None:
    """Body of every `workflow/scripts/<stage>.py`: logging into the rule's log, threads from
    the job, the stage run on its config slice alone, a user error printed as one line."""
    setup_logging(snakemake.log[0] if snakemake.log else None)
    threads = max(1, int(getattr(snakemake, "threads", 1) or 1))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        if "torch" in sys.modules or stage_name in ("train", "predict"):
            import torch  # intra-op threads = the cores Snakemake gave the job (also under SLURM)
            torch.set_num_threads(threads)
        params = dict(snakemake.params.items())
        wf = get(params.pop("workflow"))
        tracked, runtime = params.pop("cfg"), params.pop("runtime", None)
        # the ensemble's own stage has no wildcard: it is the ENSEMBLE run
        run_id = ENSEMBLE if stage_name == "ensemble" else getattr(snakemake.wildcards, "run_id", None)
        shard = getattr(snakemake.wildcards, "shard", None)
        if shard is not None:  # predict_shard: which part of how many
            params["shard"] = [int(shard), int(tracked["inference"]["shards"])]
        job = Job(input=dict(snakemake.input.items()), output=dict(snakemake.output.items()),
                  params=params, run_id=run_id_of(run_id), threads=threads)
        wf.run(stage_name, tracked, runtime.value if runtime is not None else {}, job)
    except BioflowError as exc:
        log.error("%s", exc)
        sys.stderr.write(f"bioflow: error: {exc}\n")
        sys.exit(1)
