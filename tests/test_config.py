"""bioflow.config: schema validation, defaults, key-path error messages, templates."""
from pathlib import Path

import pytest
import yaml

from bioflow import config
from bioflow.errors import BioflowError

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "config" / "templates").glob("*.yaml"))

MINIMAL = {"experiment": {"name": "x", "workflow": "classification"},
           "data": {"train": "a"}, "model": {"architecture": "simple_cnn"}}


def _cfg(**overrides):
    return config.deep_update(MINIMAL, overrides)


def test_templates_cover_every_workflow():
    names = {p.stem for p in TEMPLATES}
    assert {"classification_2d", "classification_3d", "semseg_2d", "semseg_3d", "patch_sklearn"} <= names


@pytest.mark.parametrize("path", TEMPLATES + [ROOT / "config" / "config.yaml"], ids=lambda p: p.name)
def test_every_template_and_the_demo_load(path):
    cfg = config.load(path)
    assert cfg["experiment"]["workflow"] in config.WORKFLOWS
    assert len(cfg["data"]["patch_size"]) == cfg["experiment"]["ndim"]


def test_defaults_are_filled_in_nested_sections():
    cfg = config.validate(_cfg())
    assert cfg["experiment"]["run_ids"] == [1]
    assert cfg["train"]["optimizer"] == "adamw"
    assert cfg["train"]["augmentation"]["flips"] is True
    assert cfg["inference"]["overlap"] == 0.25
    assert cfg["postprocess"] == {"z_filter": 0, "yz_filter": 0}
    assert cfg["data"]["normalization"]["type"] == "zscore"


def test_user_values_are_kept():
    cfg = config.validate(_cfg(train={"lr": 0.5, "augmentation": {"flips": False}}))
    assert cfg["train"]["lr"] == 0.5
    assert cfg["train"]["augmentation"]["flips"] is False
    assert cfg["train"]["augmentation"]["rot90"] is True


@pytest.mark.parametrize("overrides, needle", [
    ({"train": {"lrr": 0.1}}, "unknown key 'train.lrr'"),
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"train": {"lr": -1.0}}, "train.lr"),
    ({"inference": {"overlap": 1.5}}, "inference.overlap"),
    ({"train": {"optimizer": "lion"}}, "train.optimizer: 'lion' is not allowed; use one of ['adam', 'adamw', 'sgd']"),
    ({"experiment": {"name": "has space"}}, "experiment.name"),
    ({"experiment": {"ndim": 4}}, "experiment.ndim"),
    ({"data": {"patch_size": [64, 64, 64]}}, "data.patch_size: has 3 values but experiment.ndim is 2"),
    ({"train": {"class_weights": [1.0, 2.0, 3.0]}}, "train.class_weights"),
    ({"model": {"multilabel": True}}, "data.labels_csv"),
    ({"experiment": {"run_ids": []}}, "experiment.run_ids"),
    ({"experiment": {"workflow": "semantic_segmentation"}, "data": {"patch_size": [16, 64]},
      "inference": {"padding": 8}}, "inference.padding: 8 leaves no tile core"),
])
def test_bad_values_name_the_key(overrides, needle):
    with pytest.raises(BioflowError) as err:
        config.validate(_cfg(**overrides))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_all_problems_reported_at_once():
    with pytest.raises(BioflowError) as err:
        config.validate(_cfg(train={"lr": -1, "epochs": 0}, inference={"tta": "yes"}))
    msg = str(err.value)
    assert "train.lr" in msg and "train.epochs" in msg and "inference.tta" in msg


def test_missing_required_section_and_file(tmp_path):
    with pytest.raises(BioflowError, match="model"):
        config.validate({"experiment": {"name": "x", "workflow": "classification"}, "data": {"train": "a"}})
    with pytest.raises(BioflowError, match="nope.yaml"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: [unclosed")
    with pytest.raises(BioflowError, match="bad.yaml: not valid YAML"):
        config.load(bad)


def test_load_applies_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(MINIMAL))
    cfg = config.load(p, overrides={"train": {"epochs": 3}})
    assert cfg["train"]["epochs"] == 3


def test_output_layout_and_csv_paths():
    cfg = config.validate(_cfg(experiment={"result_dir": "out"}, data={"csv": "l.csv", "train": None}))
    assert config.output_root(cfg) == Path("out/x")
    assert config.run_dir(cfg, 2) == Path("out/x/results/x_2")
    paths = config.data_paths(cfg)
    assert paths["train"] == str(Path("out/x/prepared/folders/train"))


def test_cli_check(tmp_path, capsys):
    from bioflow.cli import main

    assert main(["check", str(ROOT / "config" / "config.yaml"), "--quiet"]) == 0
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(_cfg(train={"scheduler": "cosine"})))
    assert main(["check", str(p)]) == 1
    assert "train.scheduler" in capsys.readouterr().err
