"""Snakemake script: check the model name and every input file, write prepared/manifest.json
and the config used."""
import yaml

from bioflow.cli import script_main
from bioflow.data import validate
from bioflow.io import atomic_path


def stage(cfg):
    if cfg["experiment"]["workflow"] != "patch_classification":
        # Fail on a typo in model.architecture now, not after the data is prepared.
        from bioflow.models.registry import check_architecture

        check_architecture(cfg)
    validate.run(cfg, snakemake.output.manifest)
    # The validated config (defaults filled in) next to the results, as BiaPy keeps it.
    with atomic_path(snakemake.output.config) as tmp:
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))


script_main(snakemake, stage)
