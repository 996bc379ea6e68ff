# Export of each run's trained model (export.formats): TorchScript / ONNX files + export.json,
# checked against PyTorch. Works on a predict-only experiment's model.checkpoint too.

if "export" in STAGES:

    rule export:
        input:
            **inputs("export"),
        output:
            **outputs("export"),
        params:
            **stage_params("export", **paths("export")),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/export_{{run_id}}.log",
        script:
            "../scripts/export.py"
