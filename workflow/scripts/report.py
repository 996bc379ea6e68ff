"""Snakemake script: report.html over all run_ids (mean ± sd, charts, config, provenance)."""
from bioflow import report
from bioflow.cli import script_main

script_main(snakemake, lambda cfg: report.run(cfg, snakemake.params.run_dirs, snakemake.output[0]))
