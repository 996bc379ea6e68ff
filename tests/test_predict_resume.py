"""An interrupted multi-image prediction does not redo finished images: the rerun predicts only
the rest, and its outputs equal those of an uninterrupted run. Interrupted in-process, and by
kill -9 of the stage's process (classification by batch, segmentation by image)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from bioflow.inference import segmentation
from bioflow.layout import Layout
from bioflow.models import build_model
from helpers_stages import prepare
from helpers_trained import classification_run, segmentation_run  # noqa: F401


class Killed(BaseException):
    """Stands for the job being killed mid-way (not an Exception: nothing may catch it)."""


def test_rerun_after_interruption_predicts_only_the_rest(make_cfg, dsb_folders, tmp_path, monkeypatch):
    cfg = make_cfg("semantic_segmentation",
                   data={"train": str(dsb_folders / "train"), "test": str(dsb_folders / "test"),
                         "patch_size": [64, 64], "mask_transform": "foreground"},
                   model={"features": [4, 8]}, inference={"padding": 4, "full_image": False})
    prepare(cfg)
    lay = Layout.of(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    ckpt = tmp_path / "model.ckpt"
    from bioflow.data.normalization import load_stats
    stats = load_stats(lay.norm_json)  # checkpoints carry the training statistics
    torch.save({"hyper_parameters": {"cfg": cfg, "normalization": stats},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)

    real = segmentation.predict_image
    calls = []

    def counting(entry, *args, **kwargs):
        if len(calls) == 2 and kill[0]:
            raise Killed()
        calls.append(Path(entry["path"]).name)
        return real(entry, *args, **kwargs)
    monkeypatch.setattr(segmentation, "predict_image", counting)

    def run(run_dir):
        return segmentation.predict(cfg, 1, ckpt, lay.manifest_test, run_dir)

    reference = tmp_path / "reference"
    kill = [False]
    run(reference)
    assert len(calls) == 4

    interrupted = tmp_path / "interrupted"
    calls.clear()
    kill[0] = True
    with pytest.raises(Killed):
        run(interrupted)
    assert len(calls) == 2
    for folder in ("per_image", "per_image_binarized"):
        shutil.rmtree(interrupted / folder)  # what Snakemake does with an unfinished job's outputs

    calls.clear()
    kill[0] = False
    run(interrupted)
    assert len(calls) == 2  # only the two the killed run had not finished
    got = pd.read_csv(interrupted / "predictions.csv")
    want = pd.read_csv(reference / "predictions.csv")
    assert list(got["file"]) == list(want["file"])
    for folder in ("per_image", "per_image_binarized"):
        names = sorted(p.name for p in (reference / folder).iterdir())
        assert sorted(p.name for p in (interrupted / folder).iterdir()) == names
        for n in names:
            assert (interrupted / folder / n).read_bytes() == (reference / folder / n).read_bytes()
    assert not (interrupted / ".predict_done").exists()  # cleaned up after the full run


# --- kill -9 of the predict stage itself, for every workflow with a per-image predict ----------

CHILD_PREDICT = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from bioflow.inference import classification, segmentation
from helpers_stages import call
real_iter, real_image, n_images = classification.iter_proba, segmentation.predict_image, [0]

def gated_iter(*a, **k):  # the first batch goes through (and is recorded); then wait for the kill
    for n, p in enumerate(real_iter(*a, **k)):
        if n:
            time.sleep(600)
        yield p

def gated_image(*a, **k):
    n_images[0] += 1
    if n_images[0] > 1:
        time.sleep(600)
    return real_image(*a, **k)

classification.iter_proba, segmentation.predict_image = gated_iter, gated_image
call(json.load(open(sys.argv[2])), "predict", 1)
"""


def _predict_only(trained: dict, result_dir: Path, **inference) -> dict:
    from bioflow import workflows
    from helpers_trained import ckpt_of
    cfg = {"experiment": {"name": "again", "workflow": trained["experiment"]["workflow"],
                          "result_dir": str(result_dir)},
           "data": {"test": trained["data"]["test"]}, "model": {"checkpoint": ckpt_of(trained)},
           "inference": {**trained["inference"], **inference}, "metrics": {"bootstrap": 0}}
    workflows.validate_config(cfg)
    from helpers_stages import call
    call(cfg, "validate_test")
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("workflow", ["classification", "semantic_segmentation"])
def test_kill9_during_prediction_then_the_rerun_predicts_only_the_rest(workflow, request, tmp_path, monkeypatch):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from bioflow.inference import classification
    from helpers_stages import call
    from helpers_trained import run_dir

    trained = request.getfixturevalue("classification_run" if workflow == "classification" else "segmentation_run")
    # classification: 8 test images in prediction batches of 4 (inference.batch_size 1 x 4)
    extra = {"batch_size": 1} if workflow == "classification" else {}
    reference = _predict_only(trained, tmp_path / "reference", **extra)
    call(reference, "predict", 1)
    cfg = _predict_only(trained, tmp_path / "killed", **extra)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    rd = run_dir(cfg, 1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD_PREDICT, str(Path(__file__).parent), str(tmp_path / "cfg.json")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(rd.glob(".predict_done/*/*.json")):
        time.sleep(0.05)
    assert proc.poll() is None, "prediction ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert len(list(rd.glob(".predict_done/*/*.json"))) == 1 and not (rd / "predictions.csv").exists()

    units = []  # what the rerun predicts: classification batches (their sizes) or segmentation images
    if workflow == "classification":
        real = classification.iter_proba

        def counting(*a, **k):
            for p in real(*a, **k):
                units.append(len(p))
                yield p
        monkeypatch.setattr(classification, "iter_proba", counting)
    else:
        real = segmentation.predict_image
        monkeypatch.setattr(segmentation, "predict_image",
                            lambda entry, *a, **k: units.append(Path(entry["path"]).name) or real(entry, *a, **k))
    call(cfg, "predict", 1)  # the same call again
    want = pd.read_csv(run_dir(reference, 1) / "predictions.csv")
    got = pd.read_csv(rd / "predictions.csv")
    assert list(got["file"]) == list(want["file"])
    if workflow == "classification":
        assert units == [4]  # the second batch alone
        assert (rd / "predictions.csv").read_bytes() == (run_dir(reference, 1) / "predictions.csv").read_bytes()
    else:
        assert len(units) == len(want) - 1  # every image but the one the killed run finished
        for name in sorted(p.name for p in (run_dir(reference, 1) / "per_image").iterdir()):
            assert (rd / "per_image" / name).read_bytes() == (run_dir(reference, 1) / "per_image" / name).read_bytes()
    assert not (rd / ".predict_done").exists()
