"""Snakemake script: per-channel normalization statistics over the training split.

The stage runs on its config slice alone (see bioflow.workflows.run_stage)."""
from bioflow.workflows import run_stage

run_stage(snakemake, "norm_stats")
