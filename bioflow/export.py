"""Stage ``export``: a trained model as files that run without bioflow (``export.formats``).

* ``torchscript``: ``model.torchscript.pt`` (``torch.jit.load``; no Python model code needed);
* ``onnx``: ``model.onnx`` (ONNX Runtime, Fiji / deepImageJ, C++, ...; needs ``pip install
  bioflow[export]``).

Both take a normalized ``float32`` batch ``(b, c, [z,] y, x)`` and return the network's raw
scores (logits): ``(b, n_classes)`` for a classifier, ``(b, n_classes, [z,] y, x)`` for a
segmenter, whose batch and spatial axes are dynamic (any tile size that is a multiple of
``size_divisor`` works). ``export.json`` beside them says how to prepare the input (the
normalization with the training statistics, channels, patch size) and read the output (class
names, softmax / sigmoid), the provenance of the checkpoint, and how far each file's output is
from PyTorch's on the test input ``test_input.npy`` (must be below 1e-4, else the stage fails).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch

from bioflow import bioimageio_package
from bioflow.errors import BioflowError
from bioflow.io import atomic_path, write_json
from bioflow.models.checkpoint import load_model_from_checkpoint
from bioflow.models.segmentation import size_divisor

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
ONNX_OPSET = 17
SEED = 0


def example_inputs(hp: dict, model, dense: bool) -> list[torch.Tensor]:
    """Seeded normal inputs of the trained patch size (the first, batch 1, is the test input),
    and one of batch 2 and, for a dense model, another spatial size: what the dynamic axes
    must handle."""
    cfg = hp["cfg"]
    c, patch = int(cfg["data"]["channels"]), [int(p) for p in cfg["data"]["patch_size"]]
    g = torch.Generator().manual_seed(SEED)
    other = [p + size_divisor(model) for p in patch] if dense else patch
    return [torch.randn(1, c, *patch, generator=g), torch.randn(2, c, *other, generator=g)]


def _is_dense(model, x: torch.Tensor) -> bool:
    with torch.inference_mode():
        return model(x).ndim == x.ndim


def _torchscript(model, x: torch.Tensor, path: Path):
    with atomic_path(path) as tmp:
        torch.jit.save(torch.jit.trace(model, x), str(tmp))
    return torch.jit.load(str(path))


def _onnx(model, x: torch.Tensor, path: Path, dense: bool):
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        raise BioflowError("export.formats: onnx needs the onnx and onnxruntime packages; "
                           "pip install 'bioflow[export]' or remove onnx from export.formats")
    import onnxruntime

    spatial = {i: n for i, n in zip(range(2, x.ndim), ("z", "y", "x")[-(x.ndim - 2):])} if dense else {}
    axes = {0: "batch", **spatial}
    with atomic_path(path) as tmp:
        # the TorchScript-based exporter: ~15x faster here than the dynamo one, and enough for
        # these convolutional networks
        torch.onnx.export(model, (x,), str(tmp), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": axes, "output": axes}, opset_version=ONNX_OPSET, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda t: torch.from_numpy(session.run(None, {"input": t.numpy()})[0])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(cfg, ckpt_path, outputs: dict, out_dir) -> dict:
    """Write the files of ``export.formats`` (``outputs[fmt]``), check each against PyTorch,
    and write ``outputs["info"]`` (export.json); returns its content."""
    out_dir = Path(out_dir)
    model, hp = load_model_from_checkpoint(ckpt_path)
    if (hp.get("model_extra") or {}).get("n_metadata"):
        raise BioflowError(f"export.formats: the model of {ckpt_path} fuses tabular metadata "
                           f"(data.metadata_csv); only image-only models can be exported, remove export.formats")
    model = model.float().cpu().eval()
    probe = example_inputs(hp, model, dense=False)[0]
    dense = _is_dense(model, probe)
    inputs = example_inputs(hp, model, dense)
    with torch.inference_mode():
        refs = [model(x) for x in inputs]
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, arr in (("test_input", inputs[0]), ("test_output", refs[0])):
        with atomic_path(out_dir / f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, arr.numpy().astype(np.float32))

    files, diffs = {}, {}
    for fmt in (f for f in cfg["export"]["formats"] if f != "bioimageio"):  # the package comes last
        path = Path(outputs[fmt])
        run_fn = _torchscript(model, inputs[0], path) if fmt == "torchscript" else _onnx(model, inputs[0], path, dense)
        with torch.inference_mode():
            diffs[fmt] = max(float((run_fn(x) - ref).abs().max()) for x, ref in zip(inputs, refs))
        if not diffs[fmt] <= TOLERANCE:
            path.unlink()
            raise BioflowError(f"export.formats: the {fmt} model differs from PyTorch by {diffs[fmt]:.2g} "
                               f"(> {TOLERANCE}) on the test input; remove {fmt} from export.formats")
        files[fmt] = {"file": path.name, "sha256": _sha256(path)}
        log.info("export %s: %s (max |diff| to PyTorch %.2g)", fmt, path, diffs[fmt])

    tcfg = hp["cfg"]
    ndim = int(tcfg["experiment"]["ndim"])
    axes = "bc" + "zyx"[-ndim:]
    info = {
        "checkpoint": str(Path(ckpt_path).resolve()), "workflow": tcfg["experiment"]["workflow"],
        "architecture": tcfg["model"]["architecture"], "files": files,
        "input": {"axes": axes, "dtype": "float32", "channels": int(tcfg["data"]["channels"]),
                  "patch_size": list(tcfg["data"]["patch_size"]),
                  "dynamic_axes": ["b"] + (list(axes[2:]) if dense else []),
                  "size_divisor": size_divisor(model) if dense else None,
                  "normalization": {"config": tcfg["data"]["normalization"], "statistics": hp["normalization"]},
                  "test_file": "test_input.npy"},
        "output": {"axes": axes if dense else "bc", "kind": "logits",
                   "activation": "sigmoid" if tcfg["model"]["multilabel"] else "softmax over c",
                   "class_names": list(hp["class_names"]), "test_file": "test_output.npy",
                   # binary / multi-label: thresholds chosen on validation (youden, f1), for users
                   # of the exported files who want the same decision as inference.threshold
                   "validation_thresholds": hp.get("validation")},
        "max_abs_diff_to_pytorch": diffs, "tolerance": TOLERANCE, "onnx_opset": ONNX_OPSET,
        "provenance": hp.get("provenance"),
    }
    write_json(outputs["info"], info)
    if "bioimageio" in cfg["export"]["formats"]:
        bioimageio_package.write(cfg, hp, model, inputs[0].numpy(), dense, files, out_dir,
                                 Path(outputs["bioimageio"]), info)
    return info
