"""An interrupted multi-image prediction does not redo finished images: the rerun predicts only
the rest, and its outputs equal those of an uninterrupted run."""

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
