"""Shared driver of the classification benchmarks: a config from a template's default values
(only paths, channels, class count and patch size changed) and the stage functions in order:
csv_to_folders -> validate_dataset -> norm_stats -> train / predict / metrics per run_id (or
cross-validation fold) -> ensemble of the runs -> its metrics.

The baseline (``--baseline``) is the same driver on the template as committed at ``--baseline-rev``
(the previous defaults), read with ``git show``; both run the current code."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The classification templates before the issue-13 defaults (threshold auto; 3D: 5-fold CV)
PREVIOUS_DEFAULTS = "4623df4"


def template_cfg(template: str, overrides: dict, rev: str | None = None) -> dict:
    """The template (as committed at ``rev``, else the working tree's) with ``overrides``."""
    import yaml
    from bioflow.config import deep_update
    from bioflow.workflows import validate_config
    if rev:
        text = subprocess.run(["git", "show", f"{rev}:config/templates/{template}"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout
    else:
        text = (REPO / "config" / "templates" / template).read_text()
    tmpl = yaml.safe_load(text)
    cfg = deep_update(tmpl, overrides)
    validate_config(cfg, source=template)
    return cfg


def run_pipeline(cfg: dict) -> dict:
    """Every stage on its own config slice and standard paths, as the Snakemake rules run them:
    each run_id (fold) trained, predicted and scored, then their ensemble when there are several."""
    from bioflow import workflows
    from bioflow.layout import ENSEMBLE, Layout

    wf = workflows.get(cfg["experiment"]["workflow"])
    t = {}
    t0 = time.time()
    for stage in ("csv_to_folders", "validate_train", "validate_test", "norm_stats"):
        if wf.runs(stage, cfg):
            wf.call(stage, cfg)
    t["prepare_s"] = time.time() - t0
    runs = {}
    for run_id in cfg["experiment"]["run_ids"]:
        t0 = time.time()
        summary = wf.call("train", cfg, run_id=run_id)
        t[f"train_stage_{run_id}_s"] = time.time() - t0
        t0 = time.time()
        wf.call("predict", cfg, run_id=run_id)
        t[f"predict_{run_id}_s"] = time.time() - t0
        runs[run_id] = {"summary": summary, "metrics": wf.call("metrics", cfg, run_id=run_id),
                        "run_dir": str(Layout.of(cfg).run_dir(run_id))}
    out = {"runs": runs, "train_wall_s": round(sum(r["summary"]["wall_time_s"] for r in runs.values()), 1)}
    if wf.ensembled(cfg):
        wf.call("ensemble", cfg)
        out["ensemble"] = {"metrics": wf.call("metrics", cfg, run_id=ENSEMBLE),
                           "run_dir": str(Layout.of(cfg).ensemble_dir)}
    out["timing"] = {k: round(v, 1) for k, v in t.items()}
    return out


def describe(m: dict) -> str:
    """accuracy / AUC with CIs, and the thresholded accuracy when there is one."""
    line = (f"accuracy {m['accuracy']:.4f} (95% CI {m['ci95'].get('accuracy')}), AUC {m['auc']:.4f} "
            f"(95% CI {m['ci95'].get('auc')}), balanced acc {m['balanced_accuracy']:.4f}")
    thr = m.get("thresholded")
    if thr:
        line += (f"; at the {thr['method']} threshold {thr['threshold']:.3f}: accuracy {thr['accuracy']:.4f} "
                 f"(95% CI {thr.get('ci95', {}).get('accuracy')})")
    return line


def main(name: str, template: str, overrides: dict, targets: dict):
    ap = argparse.ArgumentParser(description=f"{name} classification benchmark")
    ap.add_argument("--out", default=f"/tmp/bioflow_bench/{name}", help="result_dir (outputs go there)")
    ap.add_argument("--baseline", action="store_true",
                    help="the previous defaults: the template as committed at --baseline-rev")
    ap.add_argument("--baseline-rev", default=PREVIOUS_DEFAULTS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[],
                    help="extra override section.key=yaml_value (exploration only; a reported "
                         "result uses the template values)")
    args = ap.parse_args()
    import torch
    from bioflow.config import deep_update
    from perf_common import set_overrides
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ov = deep_update(overrides, {"experiment": {"result_dir": args.out,
                                                "name": f"{name}_{'baseline' if args.baseline else 'default'}"}})
    ov = deep_update(ov, set_overrides(args.set))
    rev = args.baseline_rev if args.baseline else None
    cfg = template_cfg(template, ov, rev)
    t0 = time.time()
    res = run_pipeline(cfg)
    variant = f"baseline (template at {rev})" if args.baseline else "template defaults"
    res.update({"benchmark": name, "variant": variant,
                "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                "extra_overrides": args.set, "total_s": round(time.time() - t0, 1),
                "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus, torch threads {args.threads}",
                "targets": targets,
                "config": {k: cfg[k] for k in ("experiment", "data", "model", "train", "inference")}})
    out = Path(args.out) / f"{cfg['experiment']['name']}_result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    for run_id, r in res["runs"].items():
        s = r["summary"]
        print(f"RESULT {name} [{variant}] run {run_id}: {describe(r['metrics'])}; train {s['wall_time_s']:.0f}s, "
              f"{s['epochs_run']} epochs ({s['stop_reason']}), best epoch {s['best_epoch']} "
              f"val {s['monitor']} {s['best_score']:.4f}")
    if "ensemble" in res:
        print(f"RESULT {name} [{variant}] ensemble of {len(res['runs'])}: {describe(res['ensemble']['metrics'])}")
    print(f"RESULT {name} [{variant}]: training {res['train_wall_s']:.0f}s in all; total {res['total_s']:.0f}s -> {out}")
    return res
