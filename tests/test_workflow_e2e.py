"""End to end through Snakemake on the bundled demo data: every stage runs for real.

Training is shortened (few epochs, small patches) so each workflow takes well under a minute
or two on 2 cores; the assertions are on the files and metrics the pipeline produced.
"""
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo_data"

pytestmark = pytest.mark.slow


def snakemake_cmd(cfg: dict, workdir: Path, *extra: str) -> list[str]:
    """The user's command line for ``cfg`` (written to workdir/config.yaml), run in ``workdir``."""
    cfgfile = workdir / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--cores", "2",
            "--configfile", str(cfgfile), "--directory", str(workdir), *extra]


def run_snakemake(cfg: dict, workdir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(snakemake_cmd(cfg, workdir, *extra), capture_output=True, text=True, timeout=900)
    if check and res.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted(workdir.rglob("logs/*.log")))
        raise AssertionError(f"snakemake failed:\n{res.stderr[-4000:]}\n{logs}")
    return res


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_demo_classification_2d_from_csv(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["data"]["csv"] = str(DEMO / "pneumoniamnist" / "labels.csv")
    cfg["experiment"]["run_ids"] = [1, 2]
    cfg["train"].update(epochs=3, patience=3)
    cfg["metrics"]["bootstrap"] = 50
    run_snakemake(cfg, tmp_path)
    root = tmp_path / "results" / "demo_pneumonia"
    # shared stages
    manifest = json.loads((root / "prepared" / "manifest_train.json").read_text())
    test_part = json.loads((root / "prepared" / "manifest_test.json").read_text())
    assert manifest["classes"] == test_part["classes"] == ["normal", "pneumonia"]
    assert [len(manifest["splits"][s]) for s in ("train", "val")] + [len(test_part["splits"]["test"])] == [180, 50, 80]
    norm = json.loads((root / "prepared" / "normalization.json").read_text())
    assert len(norm["mean"]) == 1 and (root / "prepared" / "norm_mean.npy").is_file()
    assert (root / "config_files" / "config.yaml").is_file()
    for run_id in (1, 2):
        run = root / "results" / f"demo_pneumonia_{run_id}"
        assert (root / "checkpoints" / f"demo_pneumonia_{run_id}-best.ckpt").is_file()
        rows = read_csv(run / "predictions.csv")
        assert len(rows) == 80
        assert {"file", "pred_class", "prob_normal", "prob_pneumonia"} <= set(rows[0])
        for row in rows:
            assert row["pred_class"] in ("normal", "pneumonia")
            assert abs(float(row["prob_normal"]) + float(row["prob_pneumonia"]) - 1) < 1e-4
        m = json.loads((run / "metrics.json").read_text())
        for key in ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "auc",
                    "confusion_matrix"):
            assert key in m
        assert sum(map(sum, m["confusion_matrix"])) == 80
        # 3 epochs on 180 images is far from converged, but it must beat chance on real X-rays
        assert m["auc"] > 0.6
        assert list((run / "charts").glob("*.png"))
    page = (root / "report.html").read_text()
    assert "accuracy" in page and "demo_pneumonia_2" in page and "±" in page


def test_classification_3d_from_npz(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "templates" / "classification_3d.yaml").read_text())
    cfg["experiment"]["name"] = "adrenal3d"
    cfg["data"].update(csv=str(DEMO / "adrenalmnist3d" / "adrenalmnist3d_64_sample.npz"),
                       train=None, test=None, patch_size=[32, 32, 32])
    cfg["data"]["csv_options"] = {"class_names": ["normal", "abnormal"]}
    cfg["train"].update(epochs=2, batch_size=8)
    # the template cross-validates (5 folds); 2 keep this test short and still ensemble them
    assert cfg["data"]["cv_folds"] == len(cfg["experiment"]["run_ids"])
    cfg["data"]["cv_folds"], cfg["experiment"]["run_ids"] = 2, [1, 2]
    cfg["metrics"] = {"bootstrap": 20}
    run_snakemake(cfg, tmp_path)
    ens = json.loads((tmp_path / "results" / "adrenal3d" / "results" / "adrenal3d_ensemble" / "metrics.json").read_text())
    assert sum(map(sum, ens["confusion_matrix"])) == 20
    run = tmp_path / "results" / "adrenal3d" / "results" / "adrenal3d_1"
    rows = read_csv(run / "predictions.csv")
    assert len(rows) == 20 and {"prob_normal", "prob_abnormal"} <= set(rows[0])
    m = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= m["accuracy"] <= 1.0 and sum(map(sum, m["confusion_matrix"])) == 20


def _semseg_cfg(template: str, data: Path, tmp_path: Path, **data_overrides) -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "templates" / template).read_text())
    cfg["data"].update(train=str(data / "train"), test=str(data / "test"), mask_transform="foreground",
                       **data_overrides)
    cfg["train"].update(epochs=2, patience=2)
    return cfg


def _check_semseg_outputs(run: Path, n_test: int, ndim: int, post: bool):
    import tifffile

    for folder in ("per_image", "per_image_binarized"):
        files = sorted((run / folder).glob("*.tif"))
        assert len(files) == n_test, folder
    assert not (run / "full_image").exists()  # the templates run one forward pass per tile
    pred = tifffile.imread(sorted((run / "per_image").glob("*.tif"))[0])
    assert pred.ndim >= ndim
    m = json.loads((run / "metrics.json").read_text())
    for level in ("per_patch", "per_image"):
        assert 0.0 <= m["iou"][level]["foreground"] <= 1.0
    assert m["per_patch_source"] == "tiled"
    if post:
        assert len(list((run / "full_post_processing").glob("*.tif"))) == n_test
        assert "post_processing" in m["iou"]
    return m


def test_semseg_2d_dsb2018(tmp_path):
    cfg = _semseg_cfg("semseg_2d.yaml", DEMO / "dsb2018", tmp_path, patch_size=[128, 128])
    cfg["model"]["encoder"] = "resnet18"
    cfg["train"]["batch_size"] = 8  # a quarter of the template's steps' work: this checks the outputs, not accuracy
    run_snakemake(cfg, tmp_path)
    run = tmp_path / "results" / "my_semseg_2d" / "results" / "my_semseg_2d_1"
    m = _check_semseg_outputs(run, n_test=4, ndim=2, post=False)
    assert m["iou"]["per_image"]["foreground"] > 0.3  # nuclei vs background after 2 short epochs
    assert (tmp_path / "results" / "my_semseg_2d" / "report.html").is_file()


def test_semseg_3d_nuclei_with_z_filter(tmp_path):
    cfg = _semseg_cfg("semseg_3d.yaml", DEMO / "nuclei3d", tmp_path, patch_size=[16, 64, 64])
    cfg["model"]["features"] = [8, 16, 32]
    cfg["inference"]["padding"] = 4  # below half of the 16-slice patch
    cfg["postprocess"] = {"z_filter": 3, "yz_filter": 0}
    run_snakemake(cfg, tmp_path)
    run = tmp_path / "results" / "my_semseg_3d" / "results" / "my_semseg_3d_1"
    _check_semseg_outputs(run, n_test=1, ndim=3, post=True)


def test_bad_data_stops_before_training(tmp_path):
    from PIL import Image

    train = tmp_path / "data" / "train"
    for cls in ("a", "b"):
        (train / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (16, 16), color=i * 40).save(train / cls / f"{i}.png")
    (train / "b" / "notes.txt").write_text("not an image")
    (train / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cfg = {"experiment": {"name": "bad", "workflow": "classification"},
           "data": {"train": str(train), "patch_size": [16, 16]},
           "model": {"architecture": "simple_cnn", "n_classes": 2}}
    res = run_snakemake(cfg, tmp_path, check=False)
    assert res.returncode != 0
    log = (tmp_path / "results" / "bad" / "logs" / "validate_train.log").read_text()
    assert "notes.txt" in log and "broken.png" in log
    assert not (tmp_path / "results" / "bad" / "checkpoints").exists()


def test_unknown_architecture_stops_at_validation(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["data"]["csv"] = str(DEMO / "pneumoniamnist" / "labels.csv")
    cfg["model"]["architecture"] = "resnet_typo"
    res = run_snakemake(cfg, tmp_path, check=False)
    assert res.returncode != 0
    assert "model.architecture: unknown 'resnet_typo'; valid for classification 2D:" in res.stderr
    assert "simple_cnn" in res.stderr
    assert not (tmp_path / "results" / "demo_pneumonia" / "prepared" / "manifest_train.json").exists()


def test_killed_training_resumes_on_plain_rerun(tmp_path):
    import os
    import signal
    import time

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["data"]["csv"] = str(DEMO / "pneumoniamnist" / "labels.csv")
    cfg["train"].update(epochs=400, patience=0)
    cfg["metrics"]["bootstrap"] = 0
    proc = subprocess.Popen(snakemake_cmd(cfg, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last = tmp_path / "results" / "demo_pneumonia" / "checkpoints" / "demo_pneumonia_1" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.is_file() and last.stat().st_size > 0:
            time.sleep(2)  # a few more epochs
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before it could be killed"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
    proc.wait(timeout=120)
    summary = tmp_path / "results" / "demo_pneumonia" / "results" / "demo_pneumonia_1" / "train_summary.json"
    assert not summary.exists()
    # the same command again, shortened: Snakemake reruns the incomplete job, training resumes
    cfg["train"]["epochs"] = 30
    run_snakemake(cfg, tmp_path)
    s = json.loads(summary.read_text())
    assert s["resumed"] is True and s["start_epoch"] > 0
    assert (tmp_path / "results" / "demo_pneumonia" / "report.html").is_file()


def _recomputed(rows: list[dict], names: list[str]) -> dict:
    """accuracy / AUC of predictions.csv rows, from their probability columns."""
    from bioflow.metrics.classification import classification_metrics
    probs = np.array([[float(r[f"prob_{c}"]) for c in names] for r in rows])
    y = [names.index(r["true_class"]) for r in rows]
    return classification_metrics(y, probs, names)


def test_cross_validation_folds_ensembled_from_averaged_probabilities(tmp_path):
    """data.cv_folds: 3 on the demo X-rays: three fold models (one train job each), each validated
    on its own fold; their ensemble's metrics are those of the runs' averaged probabilities."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["data"].update(csv=str(DEMO / "pneumoniamnist" / "labels.csv"), cv_folds=3)
    del cfg["experiment"]["run_ids"]  # the folds make them
    cfg["train"].update(epochs=1, patience=1, n_sample_images=0)
    cfg["metrics"]["bootstrap"] = 20
    run_snakemake(cfg, tmp_path)
    root = tmp_path / "results" / "demo_pneumonia"
    # folds: the 180 train + 50 val images pooled, each in one fold, stratified
    manifest = json.loads((root / "prepared" / "manifest_train.json").read_text())
    pooled = manifest["splits"]["train"]
    assert manifest["cv_folds"] == 3 and len(pooled) == 230 and not manifest["splits"]["val"]
    per_fold = {f: [e for e in pooled if e["fold"] == f] for f in (1, 2, 3)}
    share = sum(e["label"] for e in pooled) / 230
    for f, held_out in per_fold.items():
        s = json.loads((root / "results" / f"demo_pneumonia_{f}" / "train_summary.json").read_text())
        assert (s["cv_fold"], s["n_val"], s["n_train"]) == (f, len(held_out), 230 - len(held_out))
        assert abs(sum(e["label"] for e in held_out) / len(held_out) - share) < 0.02  # stratified
    names = ["normal", "pneumonia"]
    runs = [read_csv(root / "results" / f"demo_pneumonia_{f}" / "predictions.csv") for f in (1, 2, 3)]
    ens = read_csv(root / "results" / "demo_pneumonia_ensemble" / "predictions.csv")
    assert [r["file"] for r in ens] == [r["file"] for r in runs[0]] and len(ens) == 80
    # the ensemble's probabilities are the mean of the runs' own, file by file
    by_file = [{r["file"]: r for r in run} for run in runs]
    for row in ens:
        for c in names:
            mean = sum(float(b[row["file"]][f"prob_{c}"]) for b in by_file) / 3
            assert float(row[f"prob_{c}"]) == pytest.approx(mean, abs=1e-5)
        assert row["pred_class"] == max(names, key=lambda c: float(row[f"prob_{c}"]))
    # and its metrics are computed from them (not copied from a run), with their CIs
    m = json.loads((root / "results" / "demo_pneumonia_ensemble" / "metrics.json").read_text())
    want = _recomputed(ens, names)
    assert m["run_id"] == "ensemble" and m["n_samples"] == 80
    assert m["accuracy"] == pytest.approx(want["accuracy"]) and m["auc"] == pytest.approx(want["auc"])
    assert set(m["ci95"]) >= {"accuracy", "auc"}
    page = (root / "report.html").read_text()
    assert "<th>demo_pneumonia_ensemble</th>" in page
    assert "Cross-validation: out-of-fold validation (3 folds)" in page
    # out of fold: every pooled image predicted once, by the model of the fold that held it out
    oof = [r for f in (1, 2, 3) for r in read_csv(root / "results" / f"demo_pneumonia_{f}" / "oof_predictions.csv")]
    assert sorted(r["file"] for r in oof) == sorted(e["path"] for e in pooled)
    fold_of = {e["path"]: e["fold"] for e in pooled}
    assert all(int(r["fold"]) == fold_of[r["file"]] for r in oof)
    pooled_acc = _recomputed(oof, names)["accuracy"]
    assert re.search(rf"pooled out-of-fold metrics.*?<td>accuracy</td><td>{pooled_acc:.4f}</td>", page, re.S)


def test_segmentation_ensemble_averages_the_runs_probability_maps_while_streaming(tmp_path):
    """Two 2D runs (2 cross-validation folds) predicting probability maps through the streaming
    path (a tiny memory budget); the ensemble's map is the mean of theirs, pixel by pixel."""
    import shutil

    import tifffile

    data = tmp_path / "data"  # two of the four test images: the ensemble predicts them again
    shutil.copytree(DEMO / "dsb2018" / "train", data / "train")
    for sub in ("x", "y"):
        (data / "test" / sub).mkdir(parents=True)
        for f in sorted((DEMO / "dsb2018" / "test" / sub).iterdir())[:2]:
            shutil.copy(f, data / "test" / sub / f.name)
    cfg = _semseg_cfg("semseg_2d.yaml", data, tmp_path, patch_size=[128, 128], cv_folds=2)
    del cfg["experiment"]["run_ids"]
    cfg["train"].update(epochs=1, patience=1, steps_per_epoch=2, batch_size=4, n_sample_images=0,
                        max_time_minutes=None)
    cfg["inference"].update(argmax=False, precision="32", memory_budget_mb=0.01, patch_metrics="off",
                            overlap=0.0, padding=8)
    run_snakemake(cfg, tmp_path)
    res = tmp_path / "results" / "my_semseg_2d" / "results"
    ens = res / "my_semseg_2d_ensemble"
    preds = read_csv(ens / "predictions.csv")
    assert len(preds) == 2 and all(r["streamed"] == "True" for r in preds)
    for f in sorted((ens / "per_image").glob("*.tif")):
        maps = [tifffile.imread(res / f"my_semseg_2d_{r}" / "per_image" / f.name) for r in (1, 2)]
        got = tifffile.imread(f)
        assert got.shape == maps[0].shape and got.shape[-1] == 2
        assert np.abs(got - (maps[0] + maps[1]) / 2).max() < 1e-5
        assert np.abs(maps[0] - maps[1]).max() > 1e-3  # two different models: the mean is not either
    m = json.loads((ens / "metrics.json").read_text())
    assert m["run_id"] == "ensemble" and 0.0 <= m["iou"]["per_image"]["foreground"] <= 1.0
    for r in (1, 2):
        s = json.loads((res / f"my_semseg_2d_{r}" / "train_summary.json").read_text())
        assert s["cv_fold"] == r and s["n_val"] == 6
    assert "my_semseg_2d_ensemble" in (tmp_path / "results" / "my_semseg_2d" / "report.html").read_text()
