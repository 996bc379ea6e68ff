# Shared preparation stages: CSV/npz -> class folders, dataset validation (manifest),
# normalization statistics, patch-dataset generation (patch_classification).

if config["data"]["csv"]:

    rule csv_to_folders:
        input:
            config["data"]["csv"],
        output:
            directory(f"{PREPARED}/folders"),
        params:
            cfg=stage_params("csv_to_folders"),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/csv_to_folders.log",
        script:
            "../scripts/csv_to_folders.py"


rule validate_dataset:
    input:
        unpack(validate_inputs),
    output:
        manifest=f"{PREPARED}/manifest.json",
        config=f"{ROOT}/config_files/config.yaml",
    params:
        cfg=stage_params("validate_dataset"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/validate_dataset.log",
    script:
        "../scripts/validate_dataset.py"


rule norm_stats:
    input:
        manifest=f"{PREPARED}/manifest.json",
    output:
        json=f"{PREPARED}/normalization.json",
        mean=f"{PREPARED}/norm_mean.npy",
        std=f"{PREPARED}/norm_std.npy",
    params:
        cfg=stage_params("norm_stats"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/norm_stats.log",
    script:
        "../scripts/norm_stats.py"


rule patch_dataset:
    input:
        manifest=f"{PREPARED}/manifest.json",
    output:
        info=f"{PREPARED}/patches/info.json",
    params:
        cfg=stage_params("patch_dataset"),
        out_dir=lambda wildcards, output: os.path.dirname(output.info),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/patch_dataset.log",
    script:
        "../scripts/patch_dataset.py"
