"""Shared driver of the classification benchmarks: a config from a template's default values
(only paths, channels, class count and patch size changed) and the stage functions in order:
csv_to_folders -> validate_dataset -> norm_stats -> train -> predict -> metrics."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def template_cfg(template: str, overrides: dict) -> dict:
    import yaml
    from bioflow.config import deep_update
    from bioflow.workflows import validate_config
    tmpl = yaml.safe_load((REPO / "config" / "templates" / template).read_text())
    cfg = deep_update(tmpl, overrides)
    validate_config(cfg, source=template)
    return cfg


def run_pipeline(cfg: dict, run_id: int = 1) -> dict:
    """Every stage on its own config slice and standard paths, as the Snakemake rules run them."""
    from bioflow import workflows
    from bioflow.layout import Layout

    wf = workflows.get(cfg["experiment"]["workflow"])
    t = {}
    t0 = time.time()
    for stage in ("csv_to_folders", "validate_train", "validate_test", "norm_stats"):
        if wf.runs(stage, cfg):
            wf.call(stage, cfg)
    t["prepare_s"] = time.time() - t0
    t0 = time.time()
    summary = wf.call("train", cfg, run_id=run_id)
    t["train_stage_s"] = time.time() - t0
    t0 = time.time()
    wf.call("predict", cfg, run_id=run_id)
    t["predict_s"] = time.time() - t0
    metrics = wf.call("metrics", cfg, run_id=run_id)
    return {"summary": summary, "metrics": metrics, "timing": {k: round(v, 1) for k, v in t.items()},
            "run_dir": Layout.of(cfg).run_dir(run_id)}


def main(name: str, template: str, overrides: dict, targets: dict):
    ap = argparse.ArgumentParser(description=f"{name} classification benchmark")
    ap.add_argument("--out", default=f"/tmp/bioflow_bench/{name}", help="result_dir (outputs go there)")
    ap.add_argument("--baseline", action="store_true",
                    help="the same pipeline with augmentation off (and so no TTA)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[],
                    help="extra override section.key=yaml_value (exploration only; a reported "
                         "result uses the template values)")
    args = ap.parse_args()
    import torch
    import yaml
    from bioflow.config import deep_update
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ov = deep_update(overrides, {"experiment": {"result_dir": args.out,
                                                "name": f"{name}_{'baseline' if args.baseline else 'default'}"}})
    if args.baseline:
        ov = deep_update(ov, {"train": {"augmentation": {"enabled": False}}})
    for item in args.set:
        key, val = item.split("=", 1)
        sec, k = key.split(".", 1)
        node = {sec: {}}
        cur = node[sec]
        parts = k.split(".")
        for p in parts[:-1]:
            cur[p] = {}
            cur = cur[p]
        cur[parts[-1]] = yaml.safe_load(val)
        ov = deep_update(ov, node)
    cfg = template_cfg(template, ov)
    t0 = time.time()
    res = run_pipeline(cfg)
    m, s = res["metrics"], res["summary"]
    res.update({"benchmark": name, "variant": "baseline (augmentation off)" if args.baseline else "template defaults",
                "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                "extra_overrides": args.set, "total_s": round(time.time() - t0, 1),
                "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus, torch threads {args.threads}",
                "targets": targets, "config": {k: cfg[k] for k in ("data", "model", "train", "inference")}})
    out = Path(args.out) / f"{cfg['experiment']['name']}_result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"RESULT {name} [{res['variant']}]: test accuracy {m['accuracy']:.4f} "
          f"(95% CI {m['ci95'].get('accuracy')}), AUC {m['auc']:.4f} (95% CI {m['ci95'].get('auc')}), "
          f"balanced acc {m['balanced_accuracy']:.4f}; train {s['wall_time_s']:.0f}s, "
          f"{s['epochs_run']} epochs ({s['stop_reason']}), best epoch {s['best_epoch']} "
          f"val {s['monitor']} {s['best_score']:.4f}; total {res['total_s']:.0f}s -> {out}")
    return res
