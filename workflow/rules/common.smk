# Included first by the Snakefile: config validation, the workflow object, paths, per-stage params.
# Every rule asks the registered workflow (bioflow/workflows/) for its stage's config slice;
# nothing here knows which workflow runs.
import os

import bioflow
from bioflow import workflows
from bioflow.errors import BioflowError
from bioflow.layout import Layout

# Validate when the DAG is built (defaults filled in place), so a typo fails before any job runs.
try:
    WF = workflows.validate_config(config, source="config")
except BioflowError as exc:
    # One line naming the key; no traceback needed.
    raise WorkflowError(f"bioflow: {exc}") from None

L = Layout.of(config)
EXP = config["experiment"]["name"]
RUN_IDS = config["experiment"]["run_ids"]
STAGES = WF.stages(config)
RUN = L.run_dir("{run_id}")
LOGS = L.logs
VERSION = bioflow.__version__
# Threads of the heavy stages: every core given with --cores locally. None (SLURM executor
# without --cores, `snakemake --report`) -> 1, and the cluster profile's set-threads decides.
ALL_CORES = workflow.resource_settings.cores or 1


def stage_params(stage, **extra):
    """``params:`` of a rule: the stage's config slice (tracked: a change reruns the stage),
    its runtime keys (untracked), the workflow name and the code version (a new bioflow
    version reruns what it computes)."""
    return dict(cfg=WF.params(stage, config), runtime=WF.runtime(stage, config), workflow=WF.name,
                version=VERSION, **extra)


def validate_inputs(wildcards):
    """Files validate_train reads: the CSV output, or the data folders themselves."""
    inputs = {}
    if "csv_to_folders" in STAGES:
        inputs["folders"] = L.folders
    else:
        # Only existing paths: a missing one is reported by validation together with every
        # other problem, in one message, instead of Snakemake's MissingInputException.
        inputs.update({k: config["data"][k] for k in ("train", "val") if config["data"][k]
                       and os.path.exists(config["data"][k])})
    return inputs


def validate_test_inputs(wildcards):
    # not the training manifest: both parts are checked at once, every problem listed in one run
    inputs = {}
    if "csv_to_folders" in STAGES:
        inputs["folders"] = L.folders
    elif config["data"]["test"] and os.path.exists(config["data"]["test"]):
        inputs["test"] = config["data"]["test"]
    return inputs


def csv_inputs(wildcards):
    """labels / metadata CSVs a validation reads, when the workflow uses them."""
    return {k: config["data"][k] for k in ("labels_csv", "metadata_csv")
            if f"data.{k}" in WF.keys("validate_train") and config["data"][k]}


def metrics_inputs(wildcards):
    run = RUN.format(run_id=wildcards.run_id)
    inputs = {"predictions": f"{run}/predictions.csv", "manifest": L.manifest_test}
    if "postprocess" in STAGES:
        inputs["post"] = f"{run}/full_post_processing"
    return inputs
