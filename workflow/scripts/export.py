"""Snakemake script: TorchScript / ONNX files of one run_id's model, with export.json.

The stage runs on its config slice alone (see bioflow.workflows.run_stage)."""
from bioflow.workflows import run_stage

run_stage(snakemake, "export")
