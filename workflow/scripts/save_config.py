"""Snakemake script: the validated config (defaults filled in) under config_files/.

The stage runs on its config slice alone (see bioflow.workflows.run_stage)."""
from bioflow.workflows import run_stage

run_stage(snakemake, "save_config")
