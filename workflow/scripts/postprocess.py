"""Snakemake script: z / yz median filtering of the per-image predictions."""
from bioflow import postprocess
from bioflow.cli import script_main

script_main(snakemake, lambda cfg: postprocess.run(cfg, snakemake.input.per_image, snakemake.output[0]))
