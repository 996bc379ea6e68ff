# Inference (tiled for segmentation) and post-processing.

# Segmentation writes BiaPy's per-image folders next to predictions.csv.
SEG_DIRS = ["per_image", "per_image_binarized"]
if config["inference"]["full_image"]:
    SEG_DIRS += ["full_image", "full_image_binarized"]
PREDICT_DIRS = {d: directory(f"{RUN}/{d}") for d in SEG_DIRS} if IS_SEG else {}


rule predict:
    input:
        ckpt=f"{ROOT}/checkpoints/{EXP}_{{run_id}}-best.ckpt",
        manifest=f"{PREPARED}/manifest.json",
        norm=f"{PREPARED}/normalization.json",
    output:
        csv=f"{RUN}/predictions.csv",
        **PREDICT_DIRS,
    params:
        cfg=stage_params("predict"),
        version=VERSION,
        run_dir=RUN,
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/predict_{{run_id}}.log",
    benchmark:
        f"{ROOT}/benchmarks/predict_{{run_id}}.tsv"
    threads: ALL_CORES
    resources:
        gpu=1,
    script:
        "../scripts/predict.py"


rule postprocess:
    input:
        per_image=f"{RUN}/per_image",
    output:
        directory(f"{RUN}/full_post_processing"),
    params:
        cfg=stage_params("postprocess"),
        version=VERSION,
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/postprocess_{{run_id}}.log",
    script:
        "../scripts/postprocess.py"
