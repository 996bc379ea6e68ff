# Inference (tiled for segmentation) and post-processing.

if "predict_shard" in STAGES:

    # inference.shards > 1: each shard predicts a part of the test set (a GPU job each); the
    # predict rule below then gathers them (a local job: hard links and one table)
    rule predict_shard:
        input:
            **inputs("predict_shard"),
        output:
            **outputs("predict_shard"),
        params:
            **stage_params("predict_shard", **paths("predict_shard")),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/predict_{{run_id}}_shard_{{shard}}.log",
        benchmark:
            f"{L.root}/benchmarks/predict_{{run_id}}_shard_{{shard}}.tsv"
        threads: ALL_CORES
        resources:
            gpu=1,
        script:
            "../scripts/predict_shard.py"


if "predict" in STAGES:

    rule predict:
        input:
            **inputs("predict"),
        output:
            # predictions.csv plus the workflow's other outputs (per-image folders, patch metrics)
            **outputs("predict"),
        params:
            **stage_params("predict", **paths("predict")),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/predict_{{run_id}}.log",
        benchmark:
            f"{L.root}/benchmarks/predict_{{run_id}}.tsv"
        threads: 1 if "predict_shard" in STAGES else ALL_CORES
        resources:
            gpu=0 if "predict_shard" in STAGES else 1,
        script:
            "../scripts/predict.py"


if "ensemble" in STAGES:

    # several run_ids: their models averaged into results/<name>_ensemble (evaluated by the
    # metrics rule as one more run); a GPU job when it predicts again (segmentation)
    rule ensemble:
        input:
            **inputs("ensemble"),
        output:
            **outputs("ensemble"),
        params:
            **stage_params("ensemble", **paths("ensemble")),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/ensemble.log",
        benchmark:
            f"{L.root}/benchmarks/ensemble.tsv"
        threads: ALL_CORES if WF.ensemble_predicts else 1
        resources:
            gpu=1 if WF.ensemble_predicts else 0,
        script:
            "../scripts/ensemble.py"


if "postprocess" in STAGES:

    rule postprocess:
        wildcard_constraints:
            run_id=ANY_RUN,
        input:
            **inputs("postprocess"),
        output:
            **outputs("postprocess"),
        params:
            **stage_params("postprocess"),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/postprocess_{{run_id}}.log",
        script:
            "../scripts/postprocess.py"
