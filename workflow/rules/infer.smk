# Inference (tiled for segmentation) and post-processing.

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
        threads: ALL_CORES
        resources:
            gpu=1,
        script:
            "../scripts/predict.py"


if "postprocess" in STAGES:

    rule postprocess:
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
