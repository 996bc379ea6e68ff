"""Snakemake script: metrics.json (+ tables / figures) for one run_id.

The stage runs on its config slice alone (see bioflow.workflows.run_stage)."""
from bioflow.workflows import run_stage

run_stage(snakemake, "metrics")
