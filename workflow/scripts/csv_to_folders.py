"""Snakemake script: CSV / MedMNIST .npz -> class folders (train/val/test/<class>/)."""
from bioflow.cli import script_main
from bioflow.prepare import csv_to_folders

script_main(snakemake, lambda cfg: csv_to_folders.run(cfg, snakemake.output[0]))
