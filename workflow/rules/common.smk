# Included first by the Snakefile: config validation, the workflow object, paths, per-stage params.
# Every rule asks the registered workflow (bioflow/workflows/) for its stage's config slice;
# nothing here knows which workflow runs.
import os
import sys

import bioflow
from bioflow import locks, workflows
from bioflow.errors import BioflowError
from bioflow.layout import ENSEMBLE, Layout

# Validate when the DAG is built (defaults filled in place), so a typo fails before any job runs.
try:
    WF = workflows.validate_config(config, source="config")
except BioflowError as exc:
    # One line naming the key; no traceback needed.
    raise WorkflowError(f"bioflow: {exc}") from None

# A lock left by a killed Snakemake: removed here when nothing of that run works in this folder
# any more, else the exact unlock command (bioflow.locks). Only the main process: jobs re-read
# this file on cluster nodes while the main process legitimately holds the lock.
if workflow.is_main_process:
    _msg = locks.check(os.getcwd(), workflow.main_snakefile, workflow.overwrite_configfiles or ())
    if _msg:
        print(_msg, file=sys.stderr)


onstart:
    # the lock is ours now: record who holds it, for the check above after a kill
    if workflow.is_main_process:
        locks.record_owner(os.getcwd(), workflow.executor_plugin.cli_prefix)

L = Layout.of(config)
EXP = config["experiment"]["name"]
RUN_IDS = config["experiment"]["run_ids"]
STAGES = WF.stages(config)
RUN = L.run_dir("{run_id}")
# run_id of the rules that also evaluate the ensemble (metrics, postprocess): a run or the ensemble
ANY_RUN = rf"\d+|{ENSEMBLE}"
LOGS = L.logs
VERSION = bioflow.__version__
# Threads of the heavy stages: every core given with --cores locally. None (SLURM executor
# without --cores, `snakemake --report`) -> 1, and the cluster profile's set-threads decides.
ALL_CORES = workflow.resource_settings.cores or 1


def stage_params(stage, **extra):
    """``params:`` of a rule: the stage's config slice (tracked: a change reruns the stage),
    its runtime keys (untracked), the workflow name and, for the stages that compute results,
    the code version (a new bioflow version reruns them; not the cheap preparation)."""
    versioned = {"version": VERSION} if stage in WF.code_versioned else {}
    return dict(cfg=WF.params(stage, config), runtime=WF.runtime(stage, config), workflow=WF.name,
                **versioned, **extra)


def inputs(stage, run_id="{run_id}", shard="{shard}"):
    """Named inputs of a stage, from its workflow (``Workflow.job``: one source of truth for
    the paths, shared with Python callers)."""
    return WF.job(stage, config, run_id, shard).input


def outputs(stage, run_id="{run_id}", reports=None, shard="{shard}"):
    """Named outputs of a stage; ``*_dir`` names are folders; ``reports``: name -> arguments
    of ``report()`` for the files `snakemake --report` shows."""
    out = {}
    for name, path in WF.job(stage, config, run_id, shard).output.items():
        path = directory(path) if name.endswith("_dir") else path
        if reports and name in reports:
            path = report(path, **reports[name])
        out[name] = path
    return out


def paths(stage, run_id="{run_id}", shard="{shard}"):
    """Path params of a stage (run folder, ...)."""
    return WF.job(stage, config, run_id, shard).params


def existing(named):
    """Only the data paths that exist: a missing one is reported by validation together with
    every other problem, in one message, instead of Snakemake's MissingInputException."""
    return {k: v for k, v in named.items() if os.path.exists(v)}


def data_inputs(stage, *keys):
    """The configured data folders / CSVs a validation stage reads (the folders come from
    csv_to_folders instead when the data is a CSV)."""
    keys = [k for k in keys if config["data"][k] and f"data.{k}" in WF.keys(stage)]
    if "csv_to_folders" in STAGES:
        keys = [k for k in keys if k.endswith("_csv")]
    return existing({k: config["data"][k] for k in keys})
