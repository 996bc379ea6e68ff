"""Snakemake script: check every test file, write prepared/manifest_test.json.

The stage runs on its config slice alone (see bioflow.workflows.run_stage)."""
from bioflow.workflows import run_stage

run_stage(snakemake, "validate_test")
