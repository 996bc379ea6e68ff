# Training: one job per run_id (the run_id seeds it). A GPU stage: profiles map `gpu` to a partition.

if "train" in STAGES:

    rule train:
        input:
            manifest=L.manifest_train,
            norm=L.norm_json,
        output:
            # Written at the end of training; the working folder with last.ckpt is not declared,
            # so a killed job keeps it and the rerun resumes from it.
            ckpt=L.best_ckpt("{run_id}"),
            summary=f"{RUN}/train_summary.json",
            # loss / metric curves and augmented samples, shown by `snakemake --report`
            charts=report(directory(f"{RUN}/charts"), patterns=["{name}.png"], category="Training",
                          subcategory="run {run_id}"),
        params:
            **stage_params("train", run_dir=RUN),
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
