"""Snakemake script: per-channel normalization statistics over the training split."""
from bioflow.cli import script_main
from bioflow.data import normalization

script_main(snakemake, lambda cfg: normalization.run(
    cfg, snakemake.input.manifest, snakemake.output.json, snakemake.output.mean, snakemake.output.std))
