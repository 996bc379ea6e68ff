"""Snakemake script: z / yz median filtering of the per-image predictions.

The stage runs on its config slice alone (see bioflow.workflows.run_stage)."""
from bioflow.workflows import run_stage

run_stage(snakemake, "postprocess")
