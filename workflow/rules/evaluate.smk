# Metrics per run_id, and the report over all run_ids.


rule metrics:
    input:
        unpack(metrics_inputs),
    output:
        json=report(f"{RUN}/metrics.json", category="Metrics", subcategory="run {run_id}"),
    params:
        cfg=stage_params("metrics"),
        version=VERSION,
        run_dir=RUN,
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/metrics_{{run_id}}.log",
    script:
        "../scripts/metrics.py"


rule report:
    input:
        metrics=expand(f"{RUN}/metrics.json", run_id=RUN_IDS),
        summaries=expand(f"{RUN}/train_summary.json", run_id=RUN_IDS),
    output:
        # the metrics tables (mean ± sd over run_ids, per run, per class) and charts
        report(f"{ROOT}/report.html", category="Metrics", subcategory="all runs"),
    params:
        cfg=stage_params("report"),
        run_dirs=expand(RUN, run_id=RUN_IDS),
        version=VERSION,
    conda:
        "../../environment.yml"
    log:
        f"{LOGS}/report.log",
    script:
        "../scripts/report.py"
