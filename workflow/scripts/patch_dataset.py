"""Snakemake script: cut images + defect masks into a labelled patch dataset (HDF5)."""
from bioflow.cli import script_main
from bioflow.prepare import patches

script_main(snakemake, lambda cfg: patches.run(cfg, snakemake.input.manifest, snakemake.params.out_dir))
