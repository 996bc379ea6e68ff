"""Snakemake script: CSV / MedMNIST .npz -> class folders (train/val/test/<class>/).

The stage runs on its config slice alone (see bioflow.workflows.run_stage)."""
from bioflow.workflows import run_stage

run_stage(snakemake, "csv_to_folders")
