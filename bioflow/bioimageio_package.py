"""``export.formats: [bioimageio]``: a BioImage Model Zoo package (model description format 0.5)
that deepImageJ, ilastik, napari and ``bioimageio test`` open.

The package folder ``export/<name>_<run_id>/bioimageio/`` holds ``rdf.yaml`` (axes, pre-processing
equal to bioflow's normalization with the training statistics, softmax / sigmoid post-processing,
authors / license / citations from the ``export`` section), the TorchScript weights (plus the ONNX
ones when exported too), a raw test input with the expected output, a cover image, a README made
from the experiment, and export.json. Written by :func:`bioflow.export.run` after the other formats.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from bioflow.data.normalization import normalize
from bioflow.errors import BioflowError
from bioflow.io import atomic_path, write_text

FORMAT_VERSION = "0.5.12"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def preprocessing(norm: dict, stats: dict, channels: int, space: list[str]) -> list[dict]:
    """bioflow's normalization (``data.normalization`` + training statistics) as bioimageio
    pre-processing steps; a type without an equivalent is an error naming the key."""
    kind, per_image = norm["type"], norm["per_image"]
    steps = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    if kind == "none":
        return steps
    if kind == "zscore" and per_image:
        return steps + [{"id": "zero_mean_unit_variance", "kwargs": {"axes": space}}]  # per channel
    if kind == "zscore":
        std = [float(s) if s > 1e-6 else 1.0 for s in stats["std"]]
        return steps + [{"id": "fixed_zero_mean_unit_variance",
                         "kwargs": {"mean": [float(m) for m in stats["mean"]], "std": std, "axis": "channel"}}]
    if kind == "percentile" and not per_image and channels == 1:
        lo, hi = float(stats["percentile_low"][0]), float(stats["percentile_high"][0])
        span = hi - lo if hi - lo > 1e-6 else 1.0
        return steps + [{"id": "clip", "kwargs": {"min": lo, "max": hi}},
                        {"id": "scale_linear", "kwargs": {"gain": 1.0 / span, "offset": -lo / span}}]
    raise BioflowError(f"export.formats: bioimageio has no pre-processing equal to data.normalization "
                       f"{norm} (use zscore, or percentile with one channel, or none); remove bioimageio")


def raw_test_input(norm: dict, stats: dict, z: np.ndarray) -> np.ndarray:
    """A raw ``(b, c, ...)`` image that bioflow's normalization maps near ``z`` (a normal sample)."""
    c = z.shape[1]
    shape = (1, c) + (1,) * (z.ndim - 2)
    if norm["type"] == "zscore" and not norm["per_image"]:
        return (z * np.asarray(stats["std"]).reshape(shape) + np.asarray(stats["mean"]).reshape(shape)).astype(np.float32)
    if norm["type"] == "percentile":
        lo, hi = (np.asarray(stats[k]).reshape(shape) for k in ("percentile_low", "percentile_high"))
        return (lo + (hi - lo) * (0.5 + 0.25 * z)).astype(np.float32)  # some values clipped
    return z.astype(np.float32)


def _cover(x: np.ndarray, out: np.ndarray, dense: bool, path: Path) -> None:
    """Input (first channel, middle slice) beside the predicted classes (or class bars): 2:1."""
    from PIL import Image

    def to_u8(a):
        a = a.astype(np.float64)
        a = (a - a.min()) / (np.ptp(a) or 1.0)
        return (255 * a).astype(np.uint8)

    def plane(a):
        return a[a.shape[0] // 2] if a.ndim == 3 else a

    left = Image.fromarray(to_u8(plane(x[0, 0]))).resize((256, 256), Image.NEAREST)
    if dense:
        right = Image.fromarray(to_u8(plane(out[0].argmax(0)))).resize((256, 256), Image.NEAREST)
    else:  # one bar per class, height = probability
        bars = np.zeros((256, 256), np.uint8)
        w = 256 // max(len(out[0]), 1)
        for i, p in enumerate(out[0]):
            bars[256 - int(255 * float(p)):, i * w:(i + 1) * w - 2] = 255
        right = Image.fromarray(bars)
    cover = Image.new("L", (512, 256))
    cover.paste(left, (0, 0))
    cover.paste(right, (256, 0))
    with atomic_path(path) as tmp:
        cover.save(tmp, format="PNG")


def _readme(cfg: dict, hp: dict, info: dict) -> str:
    tcfg, prov = hp["cfg"], hp.get("provenance") or {}
    training = prov.get("training") or {}
    lines = [f"# {tcfg['experiment']['workflow']} model `{tcfg['model']['architecture']}` (bioflow)", "",
             "Trained and exported with bioflow.", "", "## Data", "",
             f"- {tcfg['experiment']['ndim']}D images, {tcfg['data']['channels']} channel(s), patch size "
             f"{tcfg['data']['patch_size']}",
             f"- classes: {', '.join(map(str, hp['class_names']))}",
             f"- normalization: {tcfg['data']['normalization']} with the training-set statistics",
             f"- training manifest sha256: {prov.get('manifest_sha256')}", "", "## Training", "",
             *(f"- {k}: {v}" for k, v in training.items()),
             f"- bioflow {prov.get('bioflow_version')}, torch {prov.get('torch_version')}, "
             f"config hash {prov.get('config_hash')}", "",
             "## Validation", "",
             f"Best validation {training.get('monitor')}: {training.get('best_score')} (epoch "
             f"{training.get('best_epoch')}). Test-set metrics with 95% bootstrap confidence intervals are in "
             f"the experiment's report.html and results/<name>_<run_id>/metrics.json.", "",
             "## Configuration", "", "```yaml", yaml.safe_dump(tcfg, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def write(cfg: dict, hp: dict, model, x_norm: np.ndarray, dense: bool, files: dict, out_dir: Path,
          rdf_path: Path, info: dict) -> None:
    """The package folder of ``rdf_path`` (see the module docstring)."""
    tcfg = hp["cfg"]
    norm, stats = tcfg["data"]["normalization"], hp["normalization"]
    c, ndim = int(tcfg["data"]["channels"]), int(tcfg["experiment"]["ndim"])
    space = list("zyx"[-ndim:])
    steps = preprocessing(norm, stats, c, space)
    raw = raw_test_input(norm, stats, x_norm)
    # the expected output: bioflow's own normalization of the raw input, the network, the activation
    normed = np.moveaxis(normalize(np.moveaxis(raw[0], 0, -1), stats, norm), -1, 0)[None]
    with torch.inference_mode():
        logits = model(torch.from_numpy(np.ascontiguousarray(normed)))
    multilabel = bool(tcfg["model"]["multilabel"])
    probs = (torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)).numpy().astype(np.float32)

    pkg = rdf_path.parent
    if pkg.exists():
        shutil.rmtree(pkg)
    pkg.mkdir(parents=True)
    np.save(pkg / "test_input.npy", raw)
    np.save(pkg / "test_output.npy", probs)
    _cover(raw, probs, dense, pkg / "cover.png")
    write_text(pkg / "README.md", _readme(cfg, hp, info))
    weights = {}
    shutil.copyfile(out_dir / files["torchscript"]["file"], pkg / "weights_torchscript.pt")
    weights["torchscript"] = {"source": "weights_torchscript.pt", "sha256": _sha(pkg / "weights_torchscript.pt"),
                              "pytorch_version": str(torch.__version__).split("+")[0]}
    if "onnx" in files:
        shutil.copyfile(out_dir / files["onnx"]["file"], pkg / "weights.onnx")
        weights["onnx"] = {"source": "weights.onnx", "sha256": _sha(pkg / "weights.onnx"),
                           "opset_version": info["onnx_opset"], "parent": "torchscript"}
    write_text(pkg / "export.json", yaml.safe_dump(info))  # JSON is YAML; kept as the bioflow record

    div = info["input"]["size_divisor"] or 1
    in_axes = [{"type": "batch"}, {"type": "channel", "channel_names": [f"channel{i}" for i in range(c)]}]
    in_axes += [{"type": "space", "id": a, "size": ({"min": div, "step": div} if dense else int(s))}
                for a, s in zip(space, tcfg["data"]["patch_size"])]
    names = [f"class_{n}" if str(n)[:1].isdigit() else str(n) for n in hp["class_names"]]
    out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": names}]
    if dense:
        out_axes += [{"type": "space", "id": a, "size": {"tensor_id": "input", "axis_id": a}} for a in space]
    ex = cfg["export"]
    rdf = {
        "format_version": FORMAT_VERSION, "type": "model",
        "name": ex["name"] or f"bioflow {tcfg['experiment']['workflow']} {tcfg['model']['architecture']}",
        "description": ex["description"] or (f"{ndim}D {tcfg['experiment']['workflow']} of "
                                             f"{', '.join(map(str, hp['class_names']))}, trained with bioflow"),
        "authors": [{k: v for k, v in a.items() if v is not None} for a in ex["authors"]],
        "cite": [{k: v for k, v in ce.items() if v is not None} for ce in ex["cite"]],
        "license": ex["license"],
        "tags": ["bioflow", tcfg["experiment"]["workflow"].replace("_", "-"), f"{ndim}d", "pytorch"],
        "documentation": {"source": "README.md", "sha256": _sha(pkg / "README.md")},
        "covers": [{"source": "cover.png", "sha256": _sha(pkg / "cover.png")}],
        "attachments": [{"source": "export.json", "sha256": _sha(pkg / "export.json")}],
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [{"id": "input", "description": "raw image", "axes": in_axes,
                    "test_tensor": {"source": "test_input.npy", "sha256": _sha(pkg / "test_input.npy")},
                    "preprocessing": steps}],
        "outputs": [{"id": "output", "description": "class probabilities", "axes": out_axes,
                     "test_tensor": {"source": "test_output.npy", "sha256": _sha(pkg / "test_output.npy")},
                     "postprocessing": [{"id": "sigmoid"} if multilabel else {"id": "softmax", "kwargs": {"axis": "channel"}}]}],
        "weights": weights,
    }
    with atomic_path(rdf_path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(rdf, sort_keys=False))
