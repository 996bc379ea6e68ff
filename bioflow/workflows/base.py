"""The workflow interface: what a workflow module implements and the Snakefile asks.

A workflow is one module with one :class:`Workflow` subclass, registered by name in
:mod:`bioflow.workflows`. It says

* which stages it runs (``stages``) and, per stage, the config keys that stage reads
  (:func:`stage`, next to the function);
* how its dataset layout is scanned and validated (``scan``);
* its train / predict / evaluate functions (the stage methods);
* the DAG targets it produces (``targets``) and the per-image output folders of predict;
* its config checks beyond the schema (``check_config``) and its report sections.

The Snakemake rules are shared by all workflows: each rule asks the registered workflow for
its params (the stage's config slice), and a script calls :func:`bioflow.workflows.run_stage`,
which hands the stage a :class:`~bioflow.stage.StageConfig` of that slice alone.

Imports here stay light (no torch): the Snakefile imports this module for `snakemake -n`.
Stage bodies import their torch-heavy implementations inside the function for that reason.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
from pathlib import Path
from typing import Callable, ClassVar

from bioflow.data import normalization, validate
from bioflow.errors import BioflowError
from bioflow.io import atomic_path, write_json
from bioflow.layout import ENSEMBLE, Layout
from bioflow.config import deep_update
from bioflow.stage import Job, StageConfig, Untracked, slice_config

log = logging.getLogger(__name__)

# The stages every workflow has, in DAG order; a workflow adds its own (csv_to_folders,
# patch_dataset, postprocess) by defining a method decorated with @stage.
COMMON_STAGES = ("validate_train", "validate_test", "norm_stats", "train", "predict", "metrics", "report")
# Stages a predict-only experiment (model.checkpoint) leaves out: the model exists already.
TRAINING_STAGES = ("validate_train", "norm_stats", "train")
# export.formats -> file name in the run's export folder (beside export.json)
EXPORT_FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx", "bioimageio": "bioimageio/rdf.yaml"}
# Keys of the train stage's slice that say where the training data was, not what the model is:
# a predict-only experiment keeps its own (its data is the test set).
TRAINING_DATA_KEYS = ("data.train", "data.val", "data.val_split", "data.csv", "data.metadata_csv",
                      "experiment.split_seed", "model.checkpoint")


def stage(*keys: str, runtime: tuple[str, ...] = ()) -> Callable:
    """Mark a :class:`Workflow` method as the stage of the same name.

    ``keys``: dotted config keys the stage's output depends on (a section name takes the
    whole section); a change reruns the stage. ``runtime``: keys it reads that change how it
    runs but not what it writes (a change does not rerun it).
    """
    def mark(fn):
        fn.stage_keys = tuple(keys)
        fn.stage_runtime = tuple(runtime)
        return fn
    return mark


def run_id_of(value) -> int | str | None:
    """A run id as stages get it: an int, :data:`~bioflow.layout.ENSEMBLE`, or None (no run,
    or a ``"{run_id}"`` wildcard while the rules are built)."""
    if value == ENSEMBLE:
        return ENSEMBLE
    return int(value) if isinstance(value, int) or str(value).isdigit() else None


def _target(path) -> str:
    """The file a hidden temporary file of bioflow.io.AtomicFile stands for (else ``path``)."""
    p = Path(str(path))
    m = re.fullmatch(r"\.(.*)\.[0-9a-f]{8}\.tmp(.*)", p.name)
    return str(p.with_name(m.group(1) + m.group(2))) if m else str(path)


class Workflow:
    """Base class: the stages all workflows share, with their key lists."""

    name: ClassVar[str]
    # images come with masks (segmentation-like layouts)
    has_masks: ClassVar[bool] = False
    # inputs only some workflows read: multi-label targets, CSV / .npz data and metadata
    multilabel: ClassVar[bool] = False
    reads_csv: ClassVar[bool] = False
    # inference.threshold (decision thresholds chosen on validation) applies
    thresholds: ClassVar[bool] = False
    layout_hint: ClassVar[str] = "a folder"  # for messages: what data.train should be
    # keys a workflow's version of a shared stage reads besides the shared ones
    extra_keys: ClassVar[dict[str, tuple[str, ...]]] = {}
    # what to lower when a stage runs out of memory
    memory_keys: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": ("train.batch_size", "data.patch_size", "model.features or a smaller model.architecture"),
        "predict": ("inference.batch_size",),
    }
    # stages whose results depend on the code: a new bioflow version reruns them
    code_versioned: ClassVar[tuple[str, ...]] = ("train", "predict", "ensemble", "postprocess", "metrics", "report",
                                                 "export")
    # what the ensemble stage reads: the runs' checkpoints (it predicts again with the averaged
    # model: per-image maps are not kept as probabilities) or the runs' predictions.csv (it
    # averages their probability columns: no forward pass)
    ensemble_predicts: ClassVar[bool] = True

    # --- the interface the Snakefile uses ----------------------------------------------

    def stages(self, cfg: dict) -> list[str]:
        """The stages (= rule names) this experiment runs, in DAG order."""
        return [s for s in self.all_stages() if self.runs(s, cfg)]

    def all_stages(self) -> list[str]:
        names = [n for n in dir(type(self)) if hasattr(getattr(type(self), n), "stage_keys")]
        if "train" not in names:  # nothing to shard, export or ensemble without a trained bioflow model
            names = [n for n in names if n not in ("predict_shard", "export", "ensemble")]
        order = {s: i for i, s in enumerate(("csv_to_folders",) + COMMON_STAGES[:3]
                                            + ("patch_dataset", "patch_features", "patch_head")
                                            + COMMON_STAGES[3:4] + ("predict_shard",) + COMMON_STAGES[4:5]
                                            + ("ensemble", "postprocess") + COMMON_STAGES[5:])}
        return sorted(names, key=lambda n: order.get(n, len(order)))

    def runs(self, stage_name: str, cfg: dict) -> bool:
        """Whether the experiment needs ``stage_name`` (override for optional stages)."""
        if stage_name not in self.all_stages():
            return False
        if stage_name in TRAINING_STAGES and self.predict_only(cfg):
            return False
        if stage_name == "export":
            return bool(cfg["export"]["formats"])
        if stage_name == "predict_shard":
            return self.runs("predict", cfg) and self.sharded(cfg)
        if stage_name == "ensemble":
            return self.ensembled(cfg)
        if stage_name in ("validate_test", "predict", "metrics", "report"):
            return self.has_test(cfg)
        return True

    def has_test(self, cfg: dict) -> bool:
        return bool(cfg["data"]["test"])

    def ensembled(self, cfg: dict) -> bool:
        """An ``ensemble`` result beside the runs: several run_ids (or cross-validation folds)
        of a trained model and a test set."""
        return ("ensemble" in self.all_stages() and self.has_test(cfg) and not self.predict_only(cfg)
                and len(cfg["experiment"]["run_ids"]) > 1)

    def sharded(self, cfg: dict) -> bool:
        """Prediction split over ``inference.shards`` jobs (scatter / gather)."""
        return cfg["inference"]["shards"] > 1

    def predict_only(self, cfg: dict) -> bool:
        """A predict-only experiment: ``model.checkpoint`` names the trained model (no training)."""
        return bool(cfg["model"]["checkpoint"])

    def checkpoint_keys(self, cfg: dict) -> list[str]:
        """Leaf keys a predict-only experiment takes from its checkpoint: the train stage's
        tracked slice (what the model is and how its inputs were prepared) minus where the
        training data was."""
        def leaves(d, prefix=""):
            for k, v in d.items():
                if isinstance(v, dict) and v and not k.endswith("kwargs"):
                    yield from leaves(v, f"{prefix}{k}.")
                else:
                    yield f"{prefix}{k}"
        return [k for k in leaves(self.params("train", cfg))
                if not any(k == d or k.startswith(d + ".") for d in TRAINING_DATA_KEYS)]

    def from_checkpoint(self, cfg: dict, given: dict) -> list[str]:
        """Predict-only: fill the checkpoint's keys (:meth:`checkpoint_keys`) into ``cfg`` in
        place from the config the model was trained with; a model / data key the user ``given``
        with another value is a problem (returned), as is a workflow without a predict stage."""
        from bioflow.models import checkpoint  # torch: only for predict-only experiments

        path = cfg["model"]["checkpoint"]
        if "train" not in self.all_stages():
            return [f"model.checkpoint: the {self.name} workflow does not predict from a bioflow checkpoint; "
                    f"remove model.checkpoint"]
        problems = []
        if len(cfg["experiment"]["run_ids"]) != 1:
            problems.append(f"experiment.run_ids: a predict-only experiment has one model (model.checkpoint); "
                            f"give one run id, not {cfg['experiment']['run_ids']}")
        trained = checkpoint.hparams(path)["cfg"]
        if trained["experiment"]["workflow"] != self.name:
            return problems + [f"experiment.workflow: {self.name!r} but model.checkpoint {path} holds a "
                               f"{trained['experiment']['workflow']!r} model; set experiment.workflow: "
                               f"{trained['experiment']['workflow']}"]
        for key in self.checkpoint_keys(cfg):
            *parents, last = key.split(".")
            src, dst, user = trained, cfg, given
            for p in parents:
                src, dst = src.get(p, {}), dst[p]
                user = user.get(p, {}) if isinstance(user, dict) else {}
            if last not in src:  # a key newer than the checkpoint: the schema default stands
                continue
            # train.* only say how the model was trained (an edited copy of the training config
            # may differ there): taken from the checkpoint without complaint
            if isinstance(user, dict) and last in user and dst[last] != src[last] and parents[:1] != ["train"]:
                problems.append(f"{key}: {dst[last]!r} but the model of model.checkpoint {path} was trained "
                                f"with {src[last]!r}; remove {key} (a predict-only experiment takes it from "
                                f"the checkpoint)")
            dst[last] = src[last]
        return problems

    def keys(self, stage_name: str) -> tuple[str, ...]:
        if stage_name == "predict_shard":  # a part of predict: its keys
            return self.keys("predict")
        return self._method(stage_name).stage_keys + self.extra_keys.get(stage_name, ())

    def runtime_keys(self, stage_name: str) -> tuple[str, ...]:
        return self._method("predict" if stage_name == "predict_shard" else stage_name).stage_runtime

    def params(self, stage_name: str, cfg: dict) -> dict:
        """The stage's tracked config slice, for the rule's ``params: cfg=``: its keys minus its
        runtime keys (a section like ``train`` may hold both)."""
        return slice_config(cfg, self.keys(stage_name), exclude=self.runtime_keys(stage_name))

    def runtime(self, stage_name: str, cfg: dict) -> Untracked:
        """The stage's runtime keys, for ``params: runtime=`` (not part of the rerun check)."""
        return Untracked(slice_config(cfg, self.runtime_keys(stage_name)))

    def run(self, stage_name: str, tracked: dict, runtime: dict, job: Job):
        """Run a stage on its slice alone (what every script does)."""
        cfg = StageConfig(deep_update(tracked, runtime), stage_name)
        try:
            if stage_name == "predict" and "shards" in job.input:  # the gather of a sharded prediction
                from bioflow.inference import shards  # pandas: kept out of `snakemake -n`
                return shards.gather(job.input["shards"], job.params["run_dir"], job.output)
            return self._method(stage_name)(self, cfg, job)
        except BioflowError:
            raise
        except Exception as exc:  # noqa: BLE001 - only resource errors are translated
            msg = self.resource_error(stage_name, exc)
            if msg is None:
                raise
            raise BioflowError(msg) from exc

    def resource_error(self, stage_name: str, exc: BaseException) -> str | None:
        """One line for running out of memory or disk space (what to change), else None.
        Outputs are written atomically, so a failed write leaves no partial file."""
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {_target(exc.filename)}" if exc.filename else ""
            return (f"{stage_name}: no space left on the device{where}; free space there or set "
                    f"experiment.result_dir to a disk with room, then rerun (no partial output was kept)")
        torch = sys.modules.get("torch")  # imported by the stages that can exhaust a GPU
        oom = isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, torch.OutOfMemoryError)) \
            or (isinstance(exc, RuntimeError) and ("out of memory" in str(exc).lower()
                                                   or "can't allocate memory" in str(exc).lower()))
        if not oom:
            return None
        keys = self.memory_keys.get(stage_name, ())
        lower = f"; lower {', '.join(keys)}" if keys else "; give the job more memory"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return f"{stage_name}: out of memory ({first}){lower}, or run it on a device with more memory"

    def targets(self, cfg: dict, layout: Layout) -> list[str]:
        """Final files of the experiment (``rule all``)."""
        runs = cfg["experiment"]["run_ids"]
        exports = [f for r in runs for f in self.job("export", cfg, r).output.values()] if self.runs("export", cfg) else []
        if not self.has_test(cfg):  # the trained models (none to make in a predict-only experiment)
            trained = [] if self.predict_only(cfg) else [layout.best_ckpt(r) for r in runs]
            return trained + [layout.config_copy] + exports
        return [layout.report, layout.config_copy] + exports

    def outputs(self, stage_name: str, cfg: dict) -> dict[str, str]:
        """Files a per-run stage writes besides its main output, relative to the run folder,
        declared as rule outputs so Snakemake's incomplete-output handling covers them.
        Names ending in ``_dir`` are folders."""
        return {}

    def check_config(self, cfg: dict) -> list[str]:
        """Cross-key problems the schema cannot express (one string per problem); a subclass
        extends the list. Here: inputs only some workflows read."""
        problems = []
        if cfg["model"]["multilabel"] and not self.multilabel:
            problems.append(f"model.multilabel: the {self.name} workflow is not multi-label; only "
                            f"classification is")
        if cfg["inference"]["threshold"] != "argmax" and not self.thresholds:
            problems.append(f"inference.threshold: decision thresholds are for binary and multi-label "
                            f"classification, not {self.name}; remove inference.threshold")
        for key in ("csv", "metadata_csv"):
            if cfg["data"][key] and not self.reads_csv:
                problems.append(f"data.{key}: CSV input is for the classification workflow; give "
                                f"data.train as {self.layout_hint}")
        return problems

    def report_sections(self, cfg: StageConfig, run_dirs: list[Path]) -> list[str]:
        """The workflow's own HTML sections of report.html (after the shared metric tables)."""
        return []

    def _method(self, stage_name: str):
        fn = getattr(type(self), stage_name, None)
        if fn is None or not hasattr(fn, "stage_keys"):
            raise BioflowError(f"experiment.workflow: '{self.name}' has no stage '{stage_name}'")
        return fn

    # --- dataset scanning (per workflow) -----------------------------------------------

    def scan(self, ck: validate.Checker, cfg: StageConfig, roots: dict[str, Path],
             classes: list[str] | None) -> tuple[list[str], dict[str, list[dict]], dict]:
        """(classes, entries per split, extra manifest fields) for the splits in ``roots``.
        ``classes``: the training classes when scanning the test split, else None."""
        raise NotImplementedError

    def classes(self, cfg: StageConfig, train_root: Path | None) -> list[str]:
        """The training classes, cheaply (no image decoding): what the test part is checked
        against without waiting for the training part's manifest."""
        return [str(i) for i in range(int(cfg["model"]["n_classes"]))]

    def _validate(self, cfg: StageConfig, job: Job, part: str) -> dict:
        ck = validate.Checker(cfg, masks=self.has_masks, part=part)
        ck.min_size = self.min_size(cfg)
        roots = validate.resolve_roots(ck, cfg, validate.PARTS[part], job.input.get("folders"))
        classes = None
        if "ckpt" in job.input:  # predict-only: the model's classes
            return self._validate_for_checkpoint(cfg, job, ck, roots)
        if part == "test":
            train_root = validate.resolve_roots(validate.Checker(cfg, self.has_masks), cfg, ("train",),
                                                job.input.get("folders")).get("train")
            classes = self.classes(cfg, train_root)
        classes, splits, extra = self.scan(ck, cfg, roots, classes)
        if part == "train":
            self.check_model(ck, cfg)
        manifest = validate.assemble(ck, cfg, part, roots, classes, splits, extra,
                                     workflow=self.name, masks=self.has_masks,
                                     stratify=self.stratify(cfg))
        write_json(job.output["manifest"], manifest)
        for split in validate.PARTS[part]:
            log.info("validate_%s %s: %s", part, split, manifest["counts"].get(split))
        return manifest

    def _validate_for_checkpoint(self, cfg, job, ck, roots) -> dict:
        """validate_test of a predict-only experiment: the test data against the checkpoint's
        classes (channels and ndim are the checkpoint's already, see :meth:`from_checkpoint`);
        a misfit is one error naming the checkpoint, before any prediction."""
        from bioflow.models import checkpoint  # torch: only for predict-only experiments
        hp = checkpoint.hparams(job.input["ckpt"])
        try:
            classes, splits, extra = self.scan(ck, cfg, roots, list(hp["class_names"]))
            manifest = validate.assemble(ck, cfg, "test", roots, list(hp["class_names"]), splits, extra,
                                         workflow=self.name, masks=self.has_masks, stratify=False)
        except BioflowError as exc:
            raise BioflowError(f"model.checkpoint: {job.input['ckpt']} ({checkpoint.describe(hp)}) does not "
                               f"fit the test data", exc.problems or [str(exc)]) from None
        write_json(job.output["manifest"], manifest)
        log.info("validate_test test: %s", manifest["counts"].get("test"))
        return manifest

    def validate_dataset(self, cfg: dict, prepared: str | Path) -> tuple[dict, dict | None]:
        """Both validation stages from Python (no Snakemake): ``prepared/manifest_train.json``
        and, with a test set, ``manifest_test.json``; every problem of both parts in ONE error."""
        prepared = Path(prepared)
        out, problems = [], []
        for part in ("train", "test") if self.has_test(cfg) else ("train",):
            job = self.job(f"validate_{part}", cfg)
            job.output["manifest"] = str(prepared / f"manifest_{part}.json")
            try:
                out.append(self.call(f"validate_{part}", cfg, job))
            except BioflowError as exc:
                problems.extend(exc.problems or [str(exc)])
        if problems:
            raise BioflowError(f"validate_dataset: {len(problems)} problem(s) in the data", problems)
        return out[0], (out[1] if len(out) > 1 else None)

    def call(self, stage_name: str, cfg: dict, job: Job | None = None, run_id: int | None = None):
        """Run a stage from Python (no Snakemake) on the slice of a full validated ``cfg``;
        without ``job``, on the experiment's standard paths (those the rules use)."""
        job = job or self.job(stage_name, cfg, run_id)
        return self.run(stage_name, self.params(stage_name, cfg),
                        slice_config(cfg, self.runtime_keys(stage_name)), job)

    def job(self, stage_name: str, cfg: dict, run_id: int | str | None = None,
            shard: int | str | None = None) -> Job:
        """The named inputs, outputs and path params of a stage: what its rule declares (the
        rules build themselves from this, with ``run_id="{run_id}"``) and what a Python caller
        passes. Names ending in ``_dir`` are folders. ``shard``: of ``predict_shard`` (``"{shard}"``
        in the rule). ``run_id`` :data:`~bioflow.layout.ENSEMBLE`: the ensemble's folder (the
        ``ensemble`` stage always writes there; ``metrics`` / ``postprocess`` evaluate it as a run)."""
        lay = Layout.of(cfg)
        if stage_name == "ensemble":
            run_id = ENSEMBLE
        rd = lay.run_dir(run_id) if run_id is not None else None
        runs = cfg["experiment"]["run_ids"]
        folders = {"folders": lay.folders} if self.runs("csv_to_folders", cfg) else {}
        # predict-only: the given checkpoint instead of the train stage's
        given = cfg["model"]["checkpoint"]
        ckpt = given or lay.best_ckpt(run_id)
        trained = {"ckpt": given} if given else {}
        io = {
            "csv_to_folders": ({"csv": cfg["data"]["csv"]}, {"folders_dir": lay.folders}, {}),
            "validate_train": (folders, {"manifest": lay.manifest_train}, {}),
            "validate_test": ({**folders, **trained}, {"manifest": lay.manifest_test}, {}),
            "norm_stats": ({"manifest": lay.manifest_train},
                           {"json": lay.norm_json, "mean": f"{lay.prepared}/norm_mean.npy",
                            "std": f"{lay.prepared}/norm_std.npy"}, {}),
            "save_config": ({}, {"config": lay.config_copy}, {}),
            "train": ({"manifest": lay.manifest_train, "norm": lay.norm_json},
                      {"ckpt": lay.best_ckpt(run_id), "summary": f"{rd}/train_summary.json",
                       "charts_dir": f"{rd}/charts"}, {"run_dir": rd}),
            "predict": (({"shards": [f"{rd}/predict_shards/shard_{k}.csv" for k in range(cfg["inference"]["shards"])]}
                         if self.sharded(cfg) else {"ckpt": ckpt, "manifest": lay.manifest_test}),
                        {"csv": f"{rd}/predictions.csv"}, {"run_dir": rd}),
            # one part of a sharded prediction, in a working folder beside its declared table
            "predict_shard": ({"ckpt": ckpt, "manifest": lay.manifest_test},
                              {"csv": f"{rd}/predict_shards/shard_{shard}.csv"},
                              {"run_dir": f"{rd}/predict_shards/shard_{shard}",
                               **({"shard": [int(shard), cfg["inference"]["shards"]]}
                                  if isinstance(shard, int) or str(shard).isdigit() else {})}),
            # the runs' models averaged: their checkpoints (predicted again, see ensemble_predicts)
            # or their predictions.csv, into the ensemble's folder
            "ensemble": ({**({"ckpts": [lay.best_ckpt(r) for r in runs]} if self.ensemble_predicts
                             else {"predictions": [f"{lay.run_dir(r)}/predictions.csv" for r in runs]}),
                          "manifest": lay.manifest_test},
                         {"csv": f"{rd}/predictions.csv"}, {"run_dir": rd}),
            "postprocess": ({"per_image": f"{rd}/per_image"}, {"post_dir": f"{rd}/full_post_processing"}, {}),
            "metrics": ({"predictions": f"{rd}/predictions.csv", "manifest": lay.manifest_test,
                         **({"post": f"{rd}/full_post_processing"} if self.runs("postprocess", cfg) else {})},
                        {"json": f"{rd}/metrics.json"}, {}),
            "export": ({"ckpt": ckpt},
                       {**{fmt: f"{lay.export_dir(run_id)}/{EXPORT_FILES[fmt]}" for fmt in cfg["export"]["formats"]},
                        "info": f"{lay.export_dir(run_id)}/export.json"}, {"out_dir": lay.export_dir(run_id)}),
            "report": ({"metrics": [f"{lay.run_dir(r)}/metrics.json" for r in runs],
                        **({"ensemble_metrics": f"{lay.ensemble_dir}/metrics.json"} if self.ensembled(cfg) else {}),
                        **({"summaries": [f"{lay.run_dir(r)}/train_summary.json" for r in runs]}
                           if not self.predict_only(cfg) else {}),  # no training in a predict-only run
                        "config": lay.config_copy,
                        # what validation adapted (named in the report); no training part when predict-only
                        "manifests": ([lay.manifest_test] if self.predict_only(cfg)
                                      else [lay.manifest_train, lay.manifest_test])},
                       {"html": lay.report}, {"run_dirs": [lay.run_dir(r) for r in runs],
                                              "ensemble_dir": lay.ensemble_dir if self.ensembled(cfg) else None}),
        }
        inputs, outputs, params = io.get(stage_name) or self.stage_io(stage_name, cfg, lay, run_id)
        extra = {k: f"{rd}/{v}" for k, v in self.outputs(stage_name, cfg).items()} if rd else {}
        return Job(input=dict(inputs), output={**outputs, **extra}, params=dict(params),
                   run_id=run_id_of(run_id))

    def stage_io(self, stage_name: str, cfg: dict, lay: Layout, run_id) -> tuple[dict, dict, dict]:
        """(inputs, outputs, params) of a workflow's own stages (see :meth:`job`)."""
        raise BioflowError(f"experiment.workflow: '{self.name}' has no stage '{stage_name}'")

    def check_model(self, ck: validate.Checker, cfg: StageConfig) -> None:
        """Problems with ``model.architecture`` / ``model.weights``, listed with the data's: a
        typo fails here, before any training time is spent, without hiding data problems."""
        from bioflow.models.registry import check_architecture  # torch: kept out of `snakemake -n`
        try:
            check_architecture(cfg)
        except BioflowError as exc:
            ck.problem(str(exc))

    def min_size(self, cfg: StageConfig) -> tuple[int, ...] | None:
        """Spatial size the workflow crops its samples to: smaller images are padded, which
        validation names (an adaptation). None: sizes are free (or resized by config)."""
        return None

    def stratify(self, cfg) -> bool:
        """Whether the validation split is stratified by class."""
        return False

    # --- the shared stages ---------------------------------------------------------------

    @stage("experiment.workflow", "experiment.ndim", "experiment.split_seed", "data.train", "data.val",
           "data.val_split", "data.cv_folds", "data.csv", "data.channels", "data.channel_axis", "data.strict",
           "model.n_classes", "model.architecture", "model.weights")
    def validate_train(self, cfg: StageConfig, job: Job) -> dict:
        """Check every train / val file and write ``prepared/manifest_train.json``."""
        return self._validate(cfg, job, "train")

    @stage("experiment.ndim", "data.train", "data.test", "data.test_has_labels", "data.csv", "data.channels",
           "data.channel_axis", "data.strict", "model.n_classes")
    def validate_test(self, cfg: StageConfig, job: Job) -> dict:
        """Check every test file against the training classes; ``prepared/manifest_test.json``."""
        return self._validate(cfg, job, "test")

    @stage("data.normalization")
    def norm_stats(self, cfg: StageConfig, job: Job) -> dict:
        return normalization.run(cfg, job.input["manifest"], job.output["json"], job.output["mean"],
                                 job.output["std"])

    @stage("experiment.name", "experiment.workflow", "experiment.ndim", "experiment.run_ids", "report")
    def report(self, cfg: StageConfig, job: Job):
        from bioflow import report  # matplotlib: kept out of `snakemake -n`
        run_dirs = [Path(d) for d in job.params["run_dirs"]]
        ensemble = job.params.get("ensemble_dir")
        return report.run(cfg, run_dirs, job.output["html"], job.input["config"],
                          self.report_sections(cfg, run_dirs + ([Path(ensemble)] if ensemble else [])),
                          manifests=job.input["manifests"], ensemble_dir=ensemble)

    @stage()  # the keys of predict (see keys())
    def predict_shard(self, cfg: StageConfig, job: Job) -> Path:
        """A part of predict (``inference.shards`` > 1) in its working folder; its table, moved
        last, is the declared output (see bioflow.inference.shards)."""
        os.replace(self._method("predict")(self, cfg, job), job.output["csv"])
        return Path(job.output["csv"])

    @stage("export")
    def export(self, cfg: StageConfig, job: Job) -> dict:
        """The trained model as TorchScript / ONNX files with export.json (see bioflow.export)."""
        from bioflow import export  # torch: kept out of `snakemake -n`
        return export.run(cfg, job.input["ckpt"], job.output, job.params["out_dir"])

    @stage("experiment", "data", "model", "train", "inference", "postprocess", "patches", "metrics",
           "report", "export")
    def save_config(self, cfg: StageConfig, job: Job) -> None:
        """The validated config (defaults filled in) next to the results, as BiaPy keeps it."""
        import yaml
        with atomic_path(job.output["config"]) as tmp:
            tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
