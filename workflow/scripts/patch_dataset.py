"""Snakemake script: cut images + defect masks into a labelled patch dataset.

The stage runs on its config slice alone (see bioflow.workflows.run_stage)."""
from bioflow.workflows import run_stage

run_stage(snakemake, "patch_dataset")
