# Metrics per run_id, and the report over all run_ids.

if "metrics" in STAGES:

    rule metrics:
        input:
            unpack(metrics_inputs),
        output:
            json=report(f"{RUN}/metrics.json", category="Metrics", subcategory="run {run_id}"),
            # tables and figures the report reads
            **{k: f"{RUN}/{v}" for k, v in WF.outputs("metrics", config).items()},
        params:
            **stage_params("metrics", run_dir=RUN),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/metrics_{{run_id}}.log",
        script:
            "../scripts/metrics.py"


if "report" in STAGES:

    rule report:
        input:
            metrics=expand(f"{RUN}/metrics.json", run_id=RUN_IDS),
            summaries=expand(f"{RUN}/train_summary.json", run_id=RUN_IDS),
            config=L.config_copy,
        output:
            # the metrics tables (mean ± sd over run_ids, per run, per class) and charts
            html=report(L.report, category="Metrics", subcategory="all runs"),
        params:
            **stage_params("report", run_dirs=expand(RUN, run_id=RUN_IDS)),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/report.log",
        script:
            "../scripts/report.py"
