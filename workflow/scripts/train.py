"""Snakemake script: train one run_id; writes the best checkpoint and train_summary.json."""
from bioflow.cli import script_main
from bioflow.workflows import stage_function


def stage(cfg):
    train = stage_function("train", cfg["experiment"]["workflow"])
    train(cfg, int(snakemake.wildcards.run_id), snakemake.input.manifest, snakemake.input.norm,
          snakemake.output.ckpt, snakemake.params.run_dir)


script_main(snakemake, stage)
