# Training: one job per run_id (the run_id seeds it). A GPU stage: profiles map `gpu` to a partition.
# The working folder with last.ckpt is not a declared output, so a killed job keeps it and the
# rerun resumes from it; the best checkpoint is written at the end.

if "train" in STAGES:

    rule train:
        input:
            **inputs("train"),
        output:
            # loss / metric curves and augmented samples, shown by `snakemake --report`
            **outputs("train", reports={"charts_dir": dict(patterns=["{name}.png"], category="Training",
                                                           subcategory="run {run_id}")}),
        params:
            **stage_params("train", **paths("train")),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/train_{{run_id}}.log",
        benchmark:
            f"{L.root}/benchmarks/train_{{run_id}}.tsv"
        threads: ALL_CORES
        resources:
            gpu=1,
        script:
            "../scripts/train.py"
