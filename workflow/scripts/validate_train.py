"""Snakemake script: check every train / val file, write prepared/manifest_train.json.

The stage runs on its config slice alone (see bioflow.workflows.run_stage)."""
from bioflow.workflows import run_stage

run_stage(snakemake, "validate_train")
