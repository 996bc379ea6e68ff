"""Snakemake script: stage patch_head of the patch classification workflow.

The stage runs on its config slice alone (see bioflow.workflows.run_stage)."""
from bioflow.workflows import run_stage

run_stage(snakemake, "patch_head")
