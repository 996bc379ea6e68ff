# Metrics per run_id (and of the ensemble), and the report over all run_ids.

if "metrics" in STAGES:

    rule metrics:
        wildcard_constraints:
            run_id=ANY_RUN,
        input:
            **inputs("metrics"),
        output:
            # metrics.json plus the tables and figures the report reads
            **outputs("metrics", reports={"json": dict(category="Metrics", subcategory="run {run_id}")}),
        params:
            **stage_params("metrics", **paths("metrics")),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/metrics_{{run_id}}.log",
        script:
            "../scripts/metrics.py"


if "report" in STAGES:

    rule report:
        input:
            **inputs("report"),
        output:
            # the metrics tables (mean ± sd over run_ids, per run, per class) and charts
            **outputs("report", reports={"html": dict(category="Metrics", subcategory="all runs")}),
        params:
            **stage_params("report", **paths("report")),
        conda:
            "../../environment.yml"
        log:
            f"{LOGS}/report.log",
        script:
            "../scripts/report.py"
