"""Snakemake script: metrics.json (+ CSV / PNG) for one run_id."""
from bioflow.cli import script_main
from bioflow.workflows import stage_function


def stage(cfg):
    evaluate = stage_function("metrics", cfg["experiment"]["workflow"])
    evaluate(cfg, int(snakemake.wildcards.run_id), snakemake.input.manifest, snakemake.params.run_dir)


script_main(snakemake, stage)
