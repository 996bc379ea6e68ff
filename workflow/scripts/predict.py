"""Snakemake script: inference for one run_id (tiled for segmentation)."""
from bioflow.cli import script_main
from bioflow.workflows import stage_function


def stage(cfg):
    predict = stage_function("predict", cfg["experiment"]["workflow"])
    predict(cfg, int(snakemake.wildcards.run_id), snakemake.input.ckpt, snakemake.input.manifest,
            snakemake.input.norm, snakemake.params.run_dir)


script_main(snakemake, stage)
