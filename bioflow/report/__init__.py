"""report.html over all run_ids: metrics as mean ± sd, per-run tables, charts, config, provenance.

The page is self-contained (images embedded as base64) so it can be mailed or moved.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import statistics
from pathlib import Path


from bioflow.errors import BioflowError
from bioflow.io import atomic_path
from bioflow.provenance import library_versions

# metrics.json keys that are not scalar summaries shown in the main table: matrices, tables
# shown elsewhere, and bookkeeping (counts, settings) that would read like a metric
_SKIP = {"confusion_matrix", "class_names", "ci95", "per_class", "labels_available", "per_label",
         "run_id", "bootstrap", "n_samples", "n_predictions", "n_images", "n_patches", "threshold",
         "mistakes", "examples"}
# nested parts of a metrics.json (e.g. under "thresholded") that are tables, not summaries
_SKIP_NESTED = {"confusion_matrix", "class_names", "ci95", "per_class", "per_label"}
# train_summary.json fields worth a column (paths and hashes stay in the file)
_TRAIN_COLUMNS = ("monitor", "best_score", "best_epoch", "epochs_run", "stop_reason", "resumed", "wall_time_s",
                  "device", "precision")


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Scalar numbers of a (nested) metrics dict as ``{"iou.per_image.foreground": 0.8, ...}``."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if (not prefix and key in _SKIP) or (prefix and key in _SKIP_NESTED):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and value is not None:
            out[name] = float(value)
        elif isinstance(value, dict):
            out.update(flatten_metrics(value, prefix=f"{name}."))
    return out


def aggregate(per_run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, sample sd and count of every metric over the runs that have it (NaN ignored)."""
    names = sorted({m for run in per_run.values() for m in run})
    out = {}
    for name in names:
        vals = [run[name] for run in per_run.values() if name in run and not math.isnan(run[name])]
        if not vals:
            continue
        out[name] = {"mean": statistics.fmean(vals),
                     "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}
    return out


def _img(path: Path, width: int = 420) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" width="{width}">'
            f'<figcaption>{html.escape(path.name)}</figcaption></figure>')


def _fmt(x: float) -> str:
    return f"{x:.4f}" if abs(x) < 1000 else f"{x:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _provenance() -> dict[str, str]:
    return {**library_versions(), "generated": dt.datetime.now().isoformat(timespec="seconds")}


def adaptations_section(manifests) -> str:
    """What validation adapted on its own (manifest ``adaptations``), every file listed: the
    report names it even when nobody read the stage logs."""
    rows = []
    for path in manifests:
        m = json.loads(Path(path).read_text())
        for kind, a in (m.get("adaptations") or {}).items():
            rows.append([html.escape(m.get("part", "")), html.escape(a["what"]), str(len(a["files"])),
                         "<br>".join(html.escape(f) for f in a["files"])])
    if not rows:
        return "<h2>Adapted inputs</h2><p>None: every file was used as stored.</p>"
    return ("<h2>Adapted inputs</h2><p>Converted or skipped by bioflow on its own "
            "(<code>data.strict: true</code> makes these errors):</p>"
            + _table(["part", "adaptation", "files", "which"], rows))


def _metrics_of(d: Path) -> dict:
    mpath = d / "metrics.json"
    if not mpath.is_file():
        raise BioflowError(f"{mpath}: missing; run the metrics stage for this run_id first")
    return json.loads(mpath.read_text())


def cv_section(summaries: dict[str, dict]) -> str:
    """Cross-validation (``data.cv_folds``): each fold's model scored on its own held-out fold
    (the validation metric at its best epoch), per fold and as mean ± sd."""
    folds = {r: s for r, s in summaries.items() if s.get("cv_fold")}
    if not folds:
        return ""
    rows = [[html.escape(r), str(s["cv_fold"]), str(s.get("n_train", "")), str(s.get("n_val", "")),
             html.escape(str(s.get("monitor", ""))), "" if s.get("best_score") is None else _fmt(s["best_score"])]
            for r, s in folds.items()]
    scores = [float(s["best_score"]) for s in folds.values() if s.get("best_score") is not None]
    monitors = {s.get("monitor") for s in folds.values()}
    if scores and len(monitors) == 1:
        sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
        rows.append(["<b>mean ± sd</b>", "", "", str(sum(int(s.get("n_val") or 0) for s in folds.values())),
                     html.escape(str(monitors.pop())), f"{_fmt(statistics.fmean(scores))} ± {_fmt(sd)}"])
    k = next(iter(folds.values())).get("cv_folds", len(folds))
    return (f"<h2>Cross-validation: out-of-fold validation ({k} folds)</h2><p>Each fold's model on the "
            f"fold it did not train on; the score is that of its best epoch, chosen on the same fold "
            f"(slightly optimistic). The test metrics above are of the held-out test set.</p>"
            + _table(["run", "fold", "train images", "val images", "metric", "best score"], rows))


def build_html(cfg: dict, run_dirs: list[str | Path], config_text: str | None = None,
               sections: list[str] | None = None, manifests=(), ensemble_dir=None) -> str:
    """The page; ``ensemble_dir``: the ensemble's results, a column beside the runs (not part
    of their mean ± sd)."""
    run_dirs = [Path(d) for d in run_dirs]
    metrics, summaries = {}, {}
    for d in run_dirs:
        metrics[d.name] = _metrics_of(d)
        spath = d / "train_summary.json"
        if spath.is_file():
            summaries[d.name] = json.loads(spath.read_text())
    per_run = {name: flatten_metrics(m) for name, m in metrics.items()}
    agg = aggregate(per_run)
    ensemble = Path(ensemble_dir) if ensemble_dir else None
    if ensemble is not None:
        metrics[ensemble.name] = _metrics_of(ensemble)  # after the mean ± sd: not one of the runs
    ens = flatten_metrics(metrics[ensemble.name]) if ensemble is not None else None
    exp = cfg["experiment"]
    title = cfg["report"]["title"] or f"bioflow report: {exp['name']}"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>Workflow <b>{html.escape(exp['workflow'])}</b>, {exp['ndim']}D, "
             f"{len(run_dirs)} run(s): {', '.join(html.escape(n) for n in per_run)}"
             + (f"; their ensemble <b>{html.escape(ensemble.name)}</b> (the runs' probabilities averaged, "
                f"evaluated as one model)" if ensemble is not None else "") + ".</p>"]

    parts.append("<h2>Test metrics (mean ± sd over runs)</h2>")
    if agg:
        rows = [[html.escape(k), f"{_fmt(v['mean'])} ± {_fmt(v['sd'])}", str(v["n"])]
                + [_fmt(per_run[r][k]) if k in per_run[r] else "" for r in per_run]
                + ([_fmt(ens[k]) if k in ens else ""] if ens is not None else []) for k, v in agg.items()]
        parts.append(_table(["metric", "mean ± sd", "runs"] + list(per_run)
                            + ([ensemble.name] if ensemble is not None else []), rows))
    else:
        parts.append("<p>No test labels: predictions only (see predictions.csv in each run folder).</p>")

    cis = {r: {**m.get("ci95", {}), **{f"thresholded.{k}": v for k, v in (m.get("thresholded") or {}).get("ci95", {}).items()}}
           for r, m in metrics.items() if isinstance(m.get("ci95"), dict)}
    if cis:
        parts.append("<h2>95% bootstrap confidence intervals</h2>")
        rows = [[html.escape(r), html.escape(k), f"[{_fmt(lo)}, {_fmt(hi)}]"]
                for r, ci in cis.items() for k, (lo, hi) in ci.items()]
        parts.append(_table(["run", "metric", "95% CI"], rows))

    for r, m in metrics.items():
        if isinstance(m.get("per_class"), dict):
            parts.append(f"<h3>Per class: {html.escape(r)}</h3>")
            keys = sorted({k for v in m["per_class"].values() for k in v})
            rows = [[html.escape(c)] + [("" if k not in v else str(int(v[k])) if k == "support" else _fmt(float(v[k])))
                                        for k in keys]
                    for c, v in m["per_class"].items()]
            parts.append(_table(["class"] + keys, rows))

    if summaries:
        parts.append("<h2>Training</h2>")
        keys = [k for k in _TRAIN_COLUMNS if any(k in s for s in summaries.values())]
        rows = [[html.escape(r)] + [html.escape(_fmt(v) if isinstance(v, float) else str(v))
                                    for v in (s.get(k, "") for k in keys)] for r, s in summaries.items()]
        parts.append(_table(["run"] + keys, rows))
        parts.append(cv_section(summaries))

    max_charts = cfg["report"]["max_charts"]
    for d in run_dirs + ([ensemble] if ensemble is not None else []):
        # curves and confusion matrices first, augmented samples (smaller) last
        images = sorted(d.glob("*.png")) + sorted((d / "charts").glob("*.png"))
        images.sort(key=lambda p: p.name.startswith("aug_samples"))
        if images and max_charts:
            parts.append(f"<h2>Charts: {html.escape(d.name)}</h2><div class='figs'>")
            parts.extend(_img(p, 200 if p.name.startswith("aug_samples") else 420) for p in images[:max_charts])
            parts.append("</div>")

    if manifests:
        parts.append(adaptations_section(manifests))
    parts.extend(sections or [])  # the workflow's own sections (bioflow.workflows)
    if config_text is not None:
        parts.append("<h2>Configuration</h2><pre>" + html.escape(config_text) + "</pre>")
    prov = _provenance()
    parts.append("<h2>Provenance</h2>" + _table(["", ""], [[html.escape(k), html.escape(v)] for k, v in prov.items()]))
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left}th{background:#f3f3f3}.figs{display:flex;flex-wrap:wrap;gap:1em}"
             "figure{margin:0}figcaption{font-size:small;color:#555}pre{background:#f7f7f7;padding:1em}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def table(header: list[str], rows: list[list]) -> str:
    """An HTML table (cells escaped), for workflow report sections."""
    return _table([html.escape(str(h)) for h in header], [[html.escape(str(c)) for c in r] for r in rows])


def run(cfg: dict, run_dirs: list[str | Path], out_html: str | Path, config_file=None,
        sections: list[str] | None = None, manifests=(), ensemble_dir=None) -> Path:
    """Stage `report`: write report.html aggregating ``run_dirs`` (one per run_id);
    ``config_file``: the experiment's full config (``config_files/config.yaml``), shown as is;
    ``manifests``: the validation manifests, whose adaptations the report lists;
    ``ensemble_dir``: the ensemble's results, shown beside the runs."""
    config_text = Path(config_file).read_text() if config_file else None
    page = build_html(cfg, run_dirs, config_text, sections, manifests, ensemble_dir)
    out_html = Path(out_html)
    with atomic_path(out_html) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return out_html
