"""End to end through Snakemake on the bundled demo data: every stage runs for real.

Training is shortened (few epochs, small patches) so each workflow takes well under a minute
or two on 2 cores; the assertions are on the files and metrics the pipeline produced.
"""
import csv
import json
import subprocess
import sys
from pathlib import Path

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
    cfg["metrics"] = {"bootstrap": 20}
    run_snakemake(cfg, tmp_path)
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
