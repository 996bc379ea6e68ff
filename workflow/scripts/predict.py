"""Snakemake script: inference for one run_id (tiled for segmentation).

The stage runs on its config slice alone (see bioflow.workflows.run_stage)."""
from bioflow.workflows import run_stage

run_stage(snakemake, "predict")
