# Inference (tiled for segmentation) and post-processing.

if "predict" in STAGES:

    rule predict:
        input:
            ckpt=L.best_ckpt("{run_id}"),
            manifest=L.manifest_test,
            norm=L.norm_json,
        output:
            csv=f"{RUN}/predictions.csv",
            # the workflow's other per-run outputs (per-image folders, patch metrics)
            **{k: (directory(f"{RUN}/{v}") if k.endswith("_dir") else f"{RUN}/{v}")
               for k, v in WF.outputs("predict", config).items()},
        params:
            **stage_params("predict", run_dir=RUN),
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
            per_image=f"{RUN}/per_image",
        output:
            dir=directory(f"{RUN}/full_post_processing"),
        params:
            **stage_params("postprocess"),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/postprocess_{{run_id}}.log",
        script:
            "../scripts/postprocess.py"
