# Patch classification: frozen-backbone features (cached per run) and the scikit-learn head
# with its deployment folder. Two rules, two config slices: a head change reruns patch_head
# onward and never the feature extraction.

if "patch_features" in STAGES:

    rule patch_features:
        input:
            **inputs("patch_features"),
        output:
            **outputs("patch_features"),
        params:
            **stage_params("patch_features", **paths("patch_features")),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/patch_features_{{run_id}}.log",
        benchmark:
            f"{L.root}/benchmarks/patch_features_{{run_id}}.tsv"
        threads: ALL_CORES
        resources:
            gpu=1,
        script:
            "../scripts/patch_features.py"


if "patch_head" in STAGES:

    rule patch_head:
        input:
            **inputs("patch_head"),
        output:
            **outputs("patch_head"),
        params:
            **stage_params("patch_head", **paths("patch_head")),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/patch_head_{{run_id}}.log",
        threads: ALL_CORES
        script:
            "../scripts/patch_head.py"
