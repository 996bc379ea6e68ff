"""Report sections that show what the model gets wrong and how its decision was made: the
thresholded decision beside the argmax one, the most confident mistakes per class
(classification) and the worst / median / best test images (segmentation). Read from each
run's metrics.json and the pictures the metrics stage wrote next to it."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from bioflow.report import _fmt, _table

# metrics compared between the argmax and the thresholded decision (those present are shown)
COMPARED = ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "subset_accuracy")


def _metrics(d: Path) -> dict:
    p = Path(d) / "metrics.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def _with_ci(value, ci) -> str:
    if value is None:
        return ""
    return _fmt(float(value)) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")


def _figure(path: Path, caption: str, width: int) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" width="{width}" style="image-rendering:pixelated">'
            f"<figcaption>{caption}</figcaption></figure>")


def threshold_section(run_dirs) -> list[str]:
    """Per run: each metric at the argmax decision and at the threshold chosen on validation
    (``inference.threshold``), with 95% CIs; nothing when no run has a threshold."""
    out = []
    for d in run_dirs:
        m = _metrics(d)
        thr = m.get("thresholded")
        if not thr:
            continue
        t = thr["threshold"]
        where = (f"threshold {_fmt(t)} on p({html.escape(str(thr.get('positive_class')))})"
                 if not isinstance(t, dict) else
                 "thresholds " + ", ".join(f"{html.escape(k)} {_fmt(v)}" for k, v in t.items()))
        how = ("chosen on the validation set (" + html.escape(thr["method"]) + ")"
               if thr["method"] != "fixed" else "given in inference.threshold")
        rows = [[html.escape(k), _with_ci(m.get(k), m.get("ci95", {}).get(k)),
                 _with_ci(thr.get(k), thr.get("ci95", {}).get(k))] for k in COMPARED if k in thr]
        out.append(f"<h3>Decision threshold: {html.escape(Path(d).name)}</h3><p>{where}, {how}; the test set "
                   f"chose nothing.</p>" + _table(["metric", "argmax", f"thresholded ({thr['method']})"], rows))
    if out:
        out.insert(0, "<h2>Argmax and thresholded decisions</h2>")
    return out


def mistakes_section(run_dirs, max_runs: int = 3) -> list[str]:
    """The most confident mistakes per class of the first ``max_runs`` runs, with thumbnails."""
    out = []
    for d in list(run_dirs)[:max_runs]:
        m = _metrics(d)
        mistakes = m.get("mistakes")
        if not mistakes:
            continue
        out.append(f"<h3>Most confident mistakes: {html.escape(Path(d).name)}</h3><p>Per true class (per label "
                   f"for multi-label), the wrong {html.escape(mistakes['decision'])} decisions the model was surest "
                   f"of, most confident first.</p>")
        for cls, rows in mistakes["per_class"].items():
            if not rows:
                out.append(f"<p><b>{html.escape(cls)}</b>: no mistakes.</p>")
                continue
            figs = []
            for r in rows:
                if "predicted" in r:
                    cap = (f"{html.escape(r['file'])}<br>predicted <b>{html.escape(r['predicted'])}</b> "
                           f"p={r['prob']:.3f}<br>p({html.escape(cls)})={r['prob_true']:.3f}")
                else:
                    cap = f"{html.escape(r['file'])}<br>{html.escape(r['error'])}, p={r['prob']:.3f}"
                thumb = Path(d) / r["thumbnail"] if r.get("thumbnail") else None
                figs.append(_figure(thumb, cap, 128) if thumb is not None and thumb.is_file()
                            else f"<figure><figcaption>{cap}</figcaption></figure>")
            out.append(f"<p><b>{html.escape(cls)}</b>: {len(rows)} shown</p><div class='figs'>{''.join(figs)}</div>")
    if out:
        out.insert(0, "<h2>What the model gets wrong</h2>")
    return out


def overlays_section(run_dirs, max_runs: int = 3) -> list[str]:
    """Worst, median and best test images (foreground IoU) of the first ``max_runs`` runs:
    image | ground truth | prediction."""
    out = []
    for d in list(run_dirs)[:max_runs]:
        examples = _metrics(d).get("examples") or []
        figs = [_figure(Path(d) / e["image"],
                        f"<b>{html.escape(e['which'])}</b>: {html.escape(e['file'])}, foreground IoU "
                        f"{_fmt(e['iou_foreground'])}" + (f", z {e['z']}" if e.get("z") is not None else ""), 560)
                for e in examples if (Path(d) / e["image"]).is_file()]
        if figs:
            out.append(f"<h3>Worst, median and best test images: {html.escape(Path(d).name)}</h3>"
                       f"<p>Image | ground truth | prediction (classes tinted).</p><div class='figs'>{''.join(figs)}</div>")
    if out:
        out.insert(0, "<h2>What the model gets wrong</h2>")
    return out
