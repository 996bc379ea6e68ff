# Preparation stages: CSV/npz -> class folders, dataset validation (train part and test part:
# two manifests, so a test-set change never reruns training), normalization statistics,
# the config copy. Paths come from the workflow (Workflow.job), params from its stage slices.


if "csv_to_folders" in STAGES:

    rule csv_to_folders:
        input:
            **inputs("csv_to_folders"),
        output:
            **outputs("csv_to_folders"),
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
        **inputs("validate_train"),
        **data_inputs("validate_train", "train", "val", "labels_csv", "metadata_csv"),
    output:
        **outputs("validate_train"),
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
        **inputs("validate_test"),
        **data_inputs("validate_test", "test", "labels_csv", "metadata_csv"),
    output:
        **outputs("validate_test"),
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
        **inputs("norm_stats"),
    output:
        **outputs("norm_stats"),
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
        **outputs("save_config"),
    params:
        **stage_params("save_config"),
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/save_config.log",
    script:
        "../scripts/save_config.py"


if "patch_dataset" in STAGES:

    rule patch_dataset:
        input:
            **inputs("patch_dataset"),
        output:
            **outputs("patch_dataset"),
        params:
            **stage_params("patch_dataset", **paths("patch_dataset")),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/patch_dataset.log",
        script:
            "../scripts/patch_dataset.py"
