# Training: one job per run_id (the run_id seeds it). A GPU stage: profiles map `gpu` to a partition.


rule train:
    input:
        manifest=f"{PREPARED}/manifest.json",
        norm=f"{PREPARED}/normalization.json",
    output:
        # Written at the end of training; the working folder with last.ckpt is not declared,
        # so a killed job keeps it and the rerun resumes from it.
        ckpt=f"{ROOT}/checkpoints/{EXP}_{{run_id}}-best.ckpt",
        summary=f"{RUN}/train_summary.json",
        # loss / metric curves and augmented samples, shown by `snakemake --report`
        charts=report(directory(f"{RUN}/charts"), patterns=["{name}.png"], category="Training",
                      subcategory="run {run_id}"),
    params:
        cfg=stage_params("train"),
        version=VERSION,
        run_dir=RUN,
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/train_{{run_id}}.log",
    benchmark:
        f"{ROOT}/benchmarks/train_{{run_id}}.tsv"
    threads: ALL_CORES
    resources:
        gpu=1,
    script:
        "../scripts/train.py"
