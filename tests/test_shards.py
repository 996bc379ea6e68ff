"""Prediction sharded over jobs (``inference.shards``): scatter / gather with the outputs of one
job, and shards that skip what a killed run finished."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from bioflow import workflows
from bioflow.config import deep_update
from bioflow.inference import classification as cls_inference
from bioflow.inference import segmentation as seg_inference
from bioflow.inference import shards
from bioflow.inference.segmentation import FOLDERS
from helpers_snakemake import planned_jobs
from helpers_stages import call, job
from helpers_trained import ckpt_of, classification_run, run_dir, segmentation_run  # noqa: F401

pytestmark = pytest.mark.slow


class Killed(BaseException):
    """Stands for the job being killed (not an Exception: nothing may catch it)."""


def test_parts_are_contiguous_whole_units_covering_everything():
    for n_items, unit, n in ((10, 4, 3), (7, 1, 3), (3, 8, 4), (16, 4, 4)):
        parts = [shards.part(n_items, unit, (k, n)) for k in range(n)]
        covered = [i for p in parts for i in range(n_items)[p]]
        assert covered == list(range(n_items))
        assert all(p.start % unit == 0 for p in parts)
    assert shards.part(5, 2, None) == slice(0, 5)


def sharded_config(trained: dict, tmp: Path, n: int) -> dict:
    """The trained model on the same test set, predicted in ``n`` shards (predict-only)."""
    cfg = {"experiment": {"name": "sharded", "workflow": trained["experiment"]["workflow"],
                          "result_dir": str(tmp / "results")},
           "data": {"test": trained["data"]["test"]}, "model": {"checkpoint": ckpt_of(trained)},
           "inference": {**copy.deepcopy(trained["inference"]), "shards": n}, "metrics": {"bootstrap": 0}}
    workflows.validate_config(cfg)
    return cfg


def scatter_gather(cfg: dict, n: int) -> Path:
    call(cfg, "validate_test")
    wf = workflows.get(cfg["experiment"]["workflow"])
    for k in range(n):
        wf.call("predict_shard", cfg, wf.job("predict_shard", cfg, 1, k))
    call(cfg, "predict", 1)
    return run_dir(cfg, 1)


def test_classification_shards_gather_to_the_predictions_of_one_job(classification_run, tmp_path):
    # 8 test images, prediction batches of 4 (inference.batch_size 1 x 4): shards of 4, 4 and 0
    cfg = sharded_config(classification_run, tmp_path, 3)
    cfg["inference"]["batch_size"] = 1
    rd = scatter_gather(cfg, 3)
    single = tmp_path / "single"
    one = deep_update(cfg, {"inference": {"shards": 1}, "experiment": {"result_dir": str(single)}})
    call(one, "validate_test")
    call(one, "predict", 1)
    assert (rd / "predictions.csv").read_bytes() == (run_dir(one, 1) / "predictions.csv").read_bytes()
    assert len(pd.read_csv(rd / "predictions.csv")) == 8
    call(cfg, "metrics", 1)  # the gathered table is what metrics reads


def test_segmentation_shards_gather_images_and_tables(segmentation_run, tmp_path):
    cfg = sharded_config(segmentation_run, tmp_path, 3)
    rd = scatter_gather(cfg, 3)
    orig = run_dir(segmentation_run, 1)
    names = sorted(p.name for p in (orig / "per_image").iterdir())
    folders = [f for f in FOLDERS if (orig / f).is_dir()]  # full_image is opt-in
    for folder in folders:
        assert sorted(p.name for p in (rd / folder).iterdir()) == names
        for name in names:
            assert np.array_equal(tifffile.imread(rd / folder / name), tifffile.imread(orig / folder / name))
    a, b = pd.read_csv(rd / "predictions.csv"), pd.read_csv(orig / "predictions.csv")
    assert list(a.columns) == list(b.columns) and list(a["file"]) == list(b["file"])
    same = [c for c in a.columns if not c.startswith("seconds") and c not in FOLDERS]
    assert a[same].equals(b[same])
    for folder in folders:  # the table points at the run folder, not at the shards
        assert all(Path(p).parent == rd / folder for p in a[folder])
    assert (rd / "patch_metrics.json").read_text() == (orig / "patch_metrics.json").read_text()
    call(cfg, "metrics", 1)


def test_a_rerun_shard_skips_the_images_it_finished(segmentation_run, tmp_path, monkeypatch):
    cfg = sharded_config(segmentation_run, tmp_path, 2)
    call(cfg, "validate_test")
    wf = workflows.get("semantic_segmentation")
    shard = wf.job("predict_shard", cfg, 1, 0)
    calls = []
    real = seg_inference.predict_image

    kill = [False]

    def counting(entry, *args, **kwargs):
        if kill[0] and len(calls) == 1:
            raise Killed()  # a kill while predicting the shard's second image
        calls.append(Path(entry["path"]).name)
        return real(entry, *args, **kwargs)

    monkeypatch.setattr(seg_inference, "predict_image", counting)
    wf.call("predict_shard", cfg, shard)
    first = list(calls)
    assert len(first) == 2  # 4 test images, 2 shards
    table = Path(shard.output["csv"]).read_text()
    Path(shard.output["csv"]).unlink()
    calls.clear()
    kill[0] = True
    with pytest.raises(Killed):
        wf.call("predict_shard", cfg, shard)
    assert calls == first[:1]
    kill[0] = False
    calls.clear()
    wf.call("predict_shard", cfg, shard)  # the rerun predicts only the image it had not finished
    assert calls == first[1:]
    before, after = pd.read_csv(io.StringIO(table)), pd.read_csv(shard.output["csv"])
    same = [c for c in before.columns if not c.startswith("seconds")]
    assert after[same].equals(before[same])


def test_classification_shard_resumes_by_batch(classification_run, tmp_path, monkeypatch):
    cfg = sharded_config(classification_run, tmp_path, 1 + 1)
    cfg["inference"]["batch_size"] = 1  # batches of 4: shard 1 holds the second batch of 4
    call(cfg, "validate_test")
    wf = workflows.get("classification")
    shard = wf.job("predict_shard", cfg, 1, 1)
    batches = []
    real_iter, real_write = cls_inference.iter_proba, shards.write_csv

    def counting(*a, **k):
        for p in real_iter(*a, **k):
            batches.append(len(p))
            yield p

    def killed_before_the_table(*a, **k):
        raise Killed()  # the shard's batch is recorded, its table not yet written
    monkeypatch.setattr(cls_inference, "iter_proba", counting)
    monkeypatch.setattr(shards, "write_csv", killed_before_the_table)
    with pytest.raises(Killed):
        wf.call("predict_shard", cfg, shard)
    assert batches == [4] and not Path(shard.output["csv"]).exists()
    monkeypatch.setattr(shards, "write_csv", real_write)
    batches.clear()
    wf.call("predict_shard", cfg, shard)  # the batch's record stands: nothing to predict again
    assert batches == [] and len(pd.read_csv(shard.output["csv"])) == 4
    assert not (Path(shard.output["csv"]).with_suffix("") / ".predict_done").exists()  # removed when complete


def test_the_dag_scatters_and_gathers(classification_run, tmp_path):
    cfg = sharded_config(classification_run, tmp_path, 3)
    path = tmp_path / "sharded.yaml"
    path.write_text(yaml.safe_dump(cfg))
    jobs = planned_jobs(tmp_path, path)
    assert jobs["predict_shard"] == 3 and jobs["predict"] == 1 and jobs["metrics"] == 1


def test_a_sharded_snakemake_run_equals_one_job(segmentation_run, tmp_path):
    from helpers_snakemake import snakemake
    cfg = sharded_config(segmentation_run, tmp_path, 2)
    path = tmp_path / "sharded.yaml"
    path.write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, path, "--cores", "2")
    rd, orig = run_dir(cfg, 1), run_dir(segmentation_run, 1)
    logs = sorted(p.name for p in (rd.parents[1] / "logs").glob("predict_*"))
    assert logs == ["predict_1.log", "predict_1_shard_0.log", "predict_1_shard_1.log"]
    for name in sorted(p.name for p in (orig / "per_image").iterdir()):
        assert np.array_equal(tifffile.imread(rd / "per_image" / name), tifffile.imread(orig / "per_image" / name))
    assert len(pd.read_csv(rd / "predictions.csv")) == 4 and (rd / "metrics.json").is_file()
