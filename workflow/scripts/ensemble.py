"""Snakemake script: the ensemble of the run_ids (their averaged model) on the test set.

The stage runs on its config slice alone (see bioflow.workflows.run_stage)."""
from bioflow.workflows import run_stage

run_stage(snakemake, "ensemble")
