"""Stage export (``export.formats``): TorchScript and ONNX files that match PyTorch within 1e-4,
with dynamic spatial axes for segmentation, and export.json telling how to use them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bioflow import workflows
from bioflow.config import deep_update
from bioflow.errors import BioflowError
from bioflow.models.checkpoint import load_model_from_checkpoint
from helpers_snakemake import planned_jobs
from helpers_stages import call, job
from helpers_trained import ckpt_of, classification_run, segmentation_3d_run, segmentation_run  # noqa: F401

pytestmark = pytest.mark.slow
ort = pytest.importorskip("onnxruntime")

BOTH = {"export": {"formats": ["torchscript", "onnx"]}}


def exported(trained: dict) -> tuple[dict, dict, dict]:
    """(config with export.formats, export job outputs, export.json) after the export stage."""
    cfg = deep_update(trained, BOTH)
    workflows.validate_config(cfg)
    call(cfg, "export", 1)
    out = job(cfg, "export", 1).output
    return cfg, out, json.loads(Path(out["info"]).read_text())


def outputs(out: dict, ckpt: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """What PyTorch, the TorchScript file and the ONNX file compute for ``x``."""
    model, _ = load_model_from_checkpoint(ckpt)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
        ts = torch.jit.load(out["torchscript"])(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(out["onnx"], providers=["CPUExecutionProvider"])
    return {"pytorch": ref, "torchscript": ts, "onnx": session.run(None, {"input": x})[0]}


def assert_match(outs: dict):
    for fmt in ("torchscript", "onnx"):
        assert outs[fmt].shape == outs["pytorch"].shape, fmt
        assert np.abs(outs[fmt] - outs["pytorch"]).max() <= 1e-4, fmt


def test_classification_model_exports_and_matches_pytorch(classification_run):
    cfg, out, info = exported(classification_run)
    x = np.load(Path(out["info"]).parent / "test_input.npy")
    assert x.shape == (1, 1, 28, 28)
    outs = outputs(out, ckpt_of(cfg), x)
    assert_match(outs)
    assert outs["onnx"].shape == (1, 2)
    assert np.allclose(np.load(Path(out["info"]).parent / "test_output.npy"), outs["pytorch"], atol=1e-6)
    # a batch of another size goes through both files
    assert_match(outputs(out, ckpt_of(cfg), np.random.default_rng(1).normal(size=(3, 1, 28, 28)).astype(np.float32)))
    assert info["output"]["class_names"] == ["normal", "pneumonia"] and info["output"]["axes"] == "bc"
    thr = info["output"]["validation_thresholds"]  # chosen on validation at training
    assert thr["kind"] == "binary" and 0 < thr["youden"]["threshold"] < 1
    assert info["input"]["dynamic_axes"] == ["b"] and info["input"]["normalization"]["statistics"]["mean"]
    assert all(d <= 1e-4 for d in info["max_abs_diff_to_pytorch"].values())
    assert info["provenance"]["config_hash"] and info["provenance"]["manifest_sha256"]
    assert {f["file"] for f in info["files"].values()} == {"model.torchscript.pt", "model.onnx"}


@pytest.mark.parametrize("run, shape", [("segmentation_run", (1, 1, 96, 160)),
                                        ("segmentation_3d_run", (1, 1, 24, 40, 48))])
def test_segmentation_exports_take_any_tile_size(run, shape, request):
    trained = request.getfixturevalue(run)
    cfg, out, info = exported(trained)
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)  # not the trained patch size
    outs = outputs(out, ckpt_of(cfg), x)
    assert outs["onnx"].shape == (1, 2, *shape[2:])
    assert_match(outs)
    ndim = len(shape) - 2
    assert info["input"]["axes"] == info["output"]["axes"] == "bc" + "zyx"[-ndim:]
    assert info["input"]["dynamic_axes"] == ["b", *"zyx"[-ndim:]]


def test_export_is_planned_per_run_and_for_a_predict_only_model(classification_run, tmp_path):
    cfg = deep_update(copy.deepcopy(classification_run), {**BOTH, "experiment": {"result_dir": str(tmp_path / "r")}})
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert planned_jobs(tmp_path, path)["export"] == 1
    # a model trained elsewhere: export only (no test set), nothing else runs
    reuse = {"experiment": {"name": "reuse", "workflow": "classification", "result_dir": str(tmp_path / "r")},
             "data": {}, "model": {"checkpoint": ckpt_of(classification_run)}, **BOTH}
    path.write_text(yaml.safe_dump(reuse))
    assert set(planned_jobs(tmp_path, path)) == {"export", "save_config"}


def test_a_workflow_without_a_model_refuses_export_formats():
    cfg = {"experiment": {"name": "p", "workflow": "patch_classification"}, "data": {"train": "t"},
           "model": {"architecture": "resnet18"}, **BOTH}
    with pytest.raises(BioflowError, match="export.formats: the patch_classification workflow has no trained model"):
        workflows.validate_config(cfg)


BIOIMAGEIO = {"export": {"formats": ["torchscript", "onnx", "bioimageio"], "authors": [{"name": "A. Author"}],
                         "cite": [{"text": "bioflow test model", "url": "https://example.com/"}]}}


@pytest.mark.parametrize("run", ["classification_run", "segmentation_run", "segmentation_3d_run"])
def test_bioimageio_package_passes_bioimageio_test(run, request, tmp_path):
    """What deepImageJ / ilastik / napari users open: `bioimageio test` runs the package's
    pre-processing (bioflow's normalization with the training statistics), both weight formats
    and the post-processing on the raw test input and must reproduce the expected output."""
    import shutil
    import subprocess
    if shutil.which("bioimageio") is None:
        pytest.skip("bioimageio.core not installed (pip install -e '.[test]')")
    trained = request.getfixturevalue(run)
    cfg = deep_update(trained, {**BIOIMAGEIO, "experiment": {"result_dir": str(tmp_path / "r")}})
    cfg["model"] = {"checkpoint": ckpt_of(trained)}  # a predict-only experiment exporting the model
    cfg["data"] = {"test": None}
    workflows.validate_config(cfg)
    call(cfg, "export", 1)
    rdf = Path(job(cfg, "export", 1).output["bioimageio"])
    proc = subprocess.run(["bioimageio", "test", str(rdf)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    descr = yaml.safe_load(rdf.read_text())
    assert set(descr["weights"]) == {"torchscript", "onnx"} and descr["authors"] == [{"name": "A. Author"}]
    steps = [s["id"] for s in descr["inputs"][0]["preprocessing"]]
    assert steps[1:] == {"classification_run": ["fixed_zero_mean_unit_variance"],
                         "segmentation_run": ["clip", "scale_linear"],
                         "segmentation_3d_run": ["fixed_zero_mean_unit_variance"]}[run]
    assert "## Validation" in (rdf.parent / "README.md").read_text()


def test_bioimageio_needs_torchscript_and_an_author(classification_run):
    cfg = deep_update(classification_run, {"export": {"formats": ["bioimageio"]}})
    with pytest.raises(BioflowError) as err:
        workflows.validate_config(cfg)
    assert "bioimageio packages the TorchScript weights; add torchscript" in str(err.value)
    assert "export.authors: a bioimageio package needs at least one author" in str(err.value)
