"""Snakemake script: train one run_id; writes the best checkpoint and train_summary.json.

The stage runs on its config slice alone (see bioflow.workflows.run_stage)."""
from bioflow.workflows import run_stage

run_stage(snakemake, "train")
