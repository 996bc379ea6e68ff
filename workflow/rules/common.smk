# Included first by the Snakefile: config validation, output paths, per-stage params.
import copy
import os
from pathlib import Path

import bioflow
from bioflow import config as bfconfig
from bioflow.errors import BioflowError

# Validate when the DAG is built (defaults filled in place), so a typo fails before any job runs.
try:
    bfconfig.validate(config, source="config")
except BioflowError as exc:
    # One line naming the key; no traceback needed.
    raise WorkflowError(f"bioflow: {exc}") from None

WORKFLOW = config["experiment"]["workflow"]
EXP = config["experiment"]["name"]
RUN_IDS = config["experiment"]["run_ids"]
ROOT = str(bfconfig.output_root(config))
PREPARED = f"{ROOT}/prepared"
RUN = f"{ROOT}/results/{EXP}_{{run_id}}"
LOGS = f"{ROOT}/logs"
VERSION = bioflow.__version__
# Threads of the heavy stages: every core given with --cores locally. None (SLURM executor
# without --cores, `snakemake --report`) -> 1, and the cluster profile's set-threads decides.
ALL_CORES = workflow.resource_settings.cores or 1
IS_SEG = WORKFLOW == "semantic_segmentation"
POSTPROCESS = IS_SEG and (config["postprocess"]["z_filter"] > 0 or config["postprocess"]["yz_filter"] > 0)


# Which config keys each stage reads. These go into `params:` because Snakemake tracks
# params (not what a script reads from snakemake.config): changing a key reruns exactly
# the stages listed for it, and everything downstream of them.
STAGE_KEYS = {
    "csv_to_folders": ["experiment.name", "experiment.result_dir", "data.csv", "data.csv_options", "experiment.ndim"],
    "validate_dataset": ["experiment.workflow", "experiment.ndim", "experiment.split_seed", "model.architecture",
                         "model.weights", "data.train",
                         "data.val", "data.val_split", "data.test", "data.test_has_labels", "data.channels",
                         "data.channel_axis", "data.mask_transform", "data.labels_csv", "data.metadata_csv",
                         "model.n_classes", "model.multilabel"],
    "norm_stats": ["data.channels", "data.channel_axis", "data.normalization"],
    "patch_dataset": ["patches", "experiment.ndim", "data.channels", "data.channel_axis", "data.mask_transform"],
    "train": ["experiment.workflow", "experiment.ndim", "data", "model", "train"],
    "predict": ["experiment.workflow", "experiment.ndim", "data.patch_size", "data.channels", "data.channel_axis",
                "data.resize", "data.normalization", "data.mask_transform", "data.test_has_labels",
                "train.ignore_index", "inference"],
    "postprocess": ["experiment.ndim", "postprocess"],
    "metrics": ["experiment.workflow", "experiment.ndim", "model.n_classes", "data.mask_transform",
                "data.test_has_labels", "train.ignore_index", "metrics"],
    "report": ["experiment.name", "experiment.run_ids", "report"],
}


def stage_params(stage):
    """The slice of the config a stage depends on, as a nested dict (for `params:`)."""
    out = {}
    for dotted in STAGE_KEYS[stage]:
        section, _, key = dotted.partition(".")
        if key:
            out.setdefault(section, {})[key] = copy.deepcopy(config[section][key])
        else:
            out[section] = copy.deepcopy(config[section])
    return _key_sorted(out)


def _key_sorted(value):
    """Dicts with sorted keys, recursively. Snakemake compares params by their text, so
    without this the same keys in another order in the YAML would rerun the stage."""
    if isinstance(value, dict):
        return {k: _key_sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_key_sorted(v) for v in value]
    return value


def validate_inputs(wildcards):
    """Files validate_dataset reads: the CSV output, or the data folders themselves."""
    paths = bfconfig.data_paths(config)
    if config["data"]["csv"]:
        inputs = {"folders": f"{PREPARED}/folders"}
    else:
        # Only existing paths: a missing one is reported by validate_dataset together with
        # every other problem, in one message, instead of Snakemake's MissingInputException.
        inputs = {k: v for k, v in paths.items() if v and Path(v).exists()}
    for key in ("labels_csv", "metadata_csv"):
        if config["data"][key]:
            inputs[key] = config["data"][key]
    return inputs


def run_targets(run_id):
    run = RUN.format(run_id=run_id)
    if WORKFLOW == "patch_classification":
        return []
    targets = [f"{run}/predictions.csv", f"{run}/metrics.json"] if config["data"]["test"] or config["data"]["csv"] else []
    return targets


def final_targets():
    if WORKFLOW == "patch_classification":
        # Only patch-dataset generation exists for this workflow so far (see README).
        return [f"{PREPARED}/patches/info.json"]
    if not (config["data"]["test"] or config["data"]["csv"]):
        # No test set: train only.
        return expand(f"{ROOT}/checkpoints/{EXP}_{{run_id}}-best.ckpt", run_id=RUN_IDS)
    return [f"{ROOT}/report.html"]


def metrics_inputs(wildcards):
    run = RUN.format(run_id=wildcards.run_id)
    inputs = {"predictions": f"{run}/predictions.csv", "manifest": f"{PREPARED}/manifest.json"}
    if POSTPROCESS:
        inputs["post"] = f"{run}/full_post_processing"
    return inputs
