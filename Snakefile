# bioflow: images -> trained model -> predictions -> metrics -> report.
#   snakemake --cores all --configfile my.yaml          (workstation)
#   snakemake --profile profiles/slurm --configfile my.yaml   (SLURM cluster)
#   snakemake -n                                        (what would run)
from snakemake.utils import min_version

min_version("8.20")


# The demo is the default only when no --configfile is given: Snakemake would otherwise
# merge the demo's keys into the user's experiment. (`--config key=value` alone overrides
# the demo's keys: `if not config` would drop the demo there and fail on missing sections.)
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"



wildcard_constraints:
    run_id=r"\d+",
    shard=r"\d+",


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/patch.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/export.smk"


# Seconds-long stages run on the submitting host even under a cluster profile.
localrules:
    all,
    validate_train,
    validate_test,
    norm_stats,
    save_config,


if "csv_to_folders" in STAGES:

    localrules:
        csv_to_folders,


if "report" in STAGES:

    localrules:
        report,


if "ensemble" in STAGES and not WF.ensemble_predicts:  # averages the runs' predictions.csv

    localrules:
        ensemble,


if "predict_shard" in STAGES:  # predict only gathers the shards: hard links and a table

    localrules:
        predict,


rule all:
    input:
        WF.targets(config, L),
    default_target: True
