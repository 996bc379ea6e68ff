# Preparation stages: CSV/npz -> class folders, dataset validation (train part and test part:
# two manifests, so a test-set change never reruns training), normalization statistics,
# patch-dataset generation.


if "csv_to_folders" in STAGES:

    rule csv_to_folders:
        input:
            config["data"]["csv"],
        output:
            folders=directory(L.folders),
        params:
            **stage_params("csv_to_folders"),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/csv_to_folders.log",
        script:
            "../scripts/csv_to_folders.py"


rule validate_train:
    input:
        unpack(validate_inputs),
        unpack(csv_inputs),
    output:
        manifest=L.manifest_train,
    params:
        **stage_params("validate_train"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/validate_train.log",
    script:
        "../scripts/validate_train.py"


rule validate_test:
    input:
        unpack(validate_test_inputs),
        unpack(csv_inputs),
    output:
        manifest=L.manifest_test,
    params:
        **stage_params("validate_test"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/validate_test.log",
    script:
        "../scripts/validate_test.py"


rule norm_stats:
    input:
        manifest=L.manifest_train,
    output:
        json=L.norm_json,
        mean=f"{L.prepared}/norm_mean.npy",
        std=f"{L.prepared}/norm_std.npy",
    params:
        **stage_params("norm_stats"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/norm_stats.log",
    script:
        "../scripts/norm_stats.py"


rule save_config:
    output:
        config=L.config_copy,
    params:
        **stage_params("save_config"),
    log:
        f"{LOGS}/save_config.log",
    script:
        "../scripts/save_config.py"


if "patch_dataset" in STAGES:

    rule patch_dataset:
        input:
            manifest=L.manifest_train,
            **({"test_manifest": L.manifest_test} if "validate_test" in STAGES else {}),
        output:
            info=f"{L.patches}/info.json",
        params:
            **stage_params("patch_dataset", out_dir=L.patches),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/patch_dataset.log",
        script:
            "../scripts/patch_dataset.py"
