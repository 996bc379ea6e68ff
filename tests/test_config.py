"""bioflow.config: schema validation, defaults, key-path error messages, templates."""
import copy
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
    # the schema's checks plus the workflow's own (what the Snakefile and `bioflow check` run)
    from bioflow.workflows import validate_config
    with pytest.raises(BioflowError) as err:
        validate_config(_cfg(**overrides))
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
    from bioflow.layout import Layout
    from bioflow.workflows import get
    cfg = config.validate(_cfg(experiment={"result_dir": "out"}, data={"csv": "l.csv", "train": None}))
    lay = Layout.of(cfg)
    assert lay.root == "out/x" and lay.run_dir(2) == "out/x/results/x_2"
    # with data.csv, validation reads csv_to_folders' output
    assert get("classification").job("validate_train", cfg).input == {"folders": "out/x/prepared/folders"}


def test_cli_check(tmp_path, capsys):
    from bioflow.cli import main

    assert main(["check", str(ROOT / "config" / "config.yaml"), "--quiet"]) == 0
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(_cfg(train={"scheduler": "cosine"})))
    assert main(["check", str(p)]) == 1
    assert "train.scheduler" in capsys.readouterr().err


# --- typed config: one source of truth, generated schema, command-line strings ------------------

def test_committed_schemas_are_generated_from_the_models():
    """Both schema files are `python -m bioflow.config --write-schema` output, never hand edits."""
    for rel in config.SCHEMA_FILES:
        assert (ROOT / rel).read_text() == config.schema_text(), (
            f"{rel} differs from bioflow/config_model.py; run `python -m bioflow.config --write-schema`")


def test_generated_schema_is_a_valid_json_schema_that_agrees_with_validate():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(config.schema())
    validator.check_schema(config.schema())
    for path in TEMPLATES + [ROOT / "config" / "config.yaml"]:
        assert not list(validator.iter_errors(yaml.safe_load(path.read_text()))), path.name
    bad = _cfg(train={"optimizer": "lion", "devices": 0, "lrr": 1})
    assert len(list(validator.iter_errors(bad))) == 3
    # every section rejects unknown keys, in the schema as in validate()
    objects = [d for d in config.schema()["$defs"].values() if d.get("type") == "object"]
    assert len(objects) == 16 and all(d["additionalProperties"] is False for d in objects)


def _plain(value) -> bool:
    if isinstance(value, dict):
        return type(value) is dict and all(type(k) is str and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return type(value) is list and all(_plain(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


def test_validate_fills_the_callers_dict_in_place_with_plain_values():
    cfg = _cfg(train={"augmentation": {"flips": False}})
    train = cfg["train"]
    out = config.validate(cfg)
    assert out is cfg and cfg["train"] is train  # the Snakefile's `config` object itself is filled
    assert train["augmentation"] == {"enabled": True, "flips": False, "rot90": True, "affine": False,
                                     "brightness_contrast": False, "gaussian_noise": False, "probability": 0.5}
    assert set(cfg) == {"experiment", "data", "model", "train", "inference", "postprocess", "patches",
                        "metrics", "report", "export"}
    assert _plain(cfg)
    assert config.validate(copy.deepcopy(cfg)) == cfg  # idempotent


def test_an_integer_in_a_number_key_stays_an_integer():
    # So the params Snakemake records (and the checkpoint's config hash) do not change.
    cfg = config.validate(_cfg(train={"max_time_minutes": 30, "lr": 1, "class_weights": [1, 2]}))
    assert type(cfg["train"]["max_time_minutes"]) is int and type(cfg["train"]["lr"]) is int
    assert cfg["train"]["class_weights"] == [1, 2] and type(cfg["train"]["class_weights"][0]) is int
    assert type(cfg["train"]["weight_decay"]) is float


@pytest.mark.parametrize("section, key, given, expected", [
    ("inference", "tta", "true", True),
    ("train", "augmentation", {"flips": "False"}, {"flips": False}),
    ("train", "lr", "0.5", 0.5),
    ("train", "lr", "1e-4", 1e-4),  # YAML 1.1 would keep this a string
    ("train", "epochs", "3", 3),
    ("experiment", "run_ids", "[1, 2]", [1, 2]),
    ("experiment", "ndim", "2", 2),
    ("data", "patch_size", ["64", "64"], [64, 64]),  # what Snakemake makes of [64, 64]
    ("train", "class_weights", ["1", "2.5"], [1, 2.5]),
    ("train", "class_weights", "auto", "auto"),
    ("train", "devices", "2", 2),
    ("train", "devices", "auto", "auto"),
    ("train", "ignore_index", "null", None),
    ("data", "val", "null", None),
    ("train", "precision", "32", "32"),  # a string enum keeps its string
    ("experiment", "name", "123", "123"),  # a string key keeps its string
    ("train", "strategy", "true", "true"),
])
def test_command_line_strings_are_coerced_to_the_keys_type(section, key, given, expected):
    cfg = config.validate(_cfg(**{section: {key: given}}))
    got = cfg[section][key]
    if isinstance(expected, dict):
        got = {k: got[k] for k in expected}
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("section, key, given", [
    ("train", "lr", "fast"),
    ("inference", "tta", "yes"),  # YAML 1.1 booleans other than true/false stay strings
    ("train", "epochs", "3.5"),
    ("train", "epochs", "null"),
    ("experiment", "ndim", "4"),
    ("data", "patch_size", ["64", "x"]),
    ("experiment", "run_ids", "[1, 2"),
])
def test_a_string_that_cannot_be_coerced_names_the_key(section, key, given):
    with pytest.raises(BioflowError) as err:
        config.validate(_cfg(**{section: {key: given}}))
    assert f"{section}.{key}" in str(err.value)


@pytest.mark.parametrize("overrides, needle", [
    ({"patches": {"classifier": "logistic_regression"}}, "patches.classifier: string should match pattern"),
    ({"patches": {"reconstruction": "majority"}}, "patches.reconstruction: 'majority' is not allowed"),
    ({"patches": {"min_defect_fraction": 0.1}}, "unknown key 'patches.min_defect_fraction'"),
    ({"train": {"devices": 0}}, "train.devices: 0 is not allowed"),
    ({"train": {"class_weights": [1.0, -1.0]}}, "train.class_weights.1: input should be greater than or equal to 0"),
    ({"experiment": {"run_ids": [1, 1]}}, "experiment.run_ids: run ids must be unique"),
    ({"train": {"augmentation": {"flipz": True}}}, "unknown key 'train.augmentation.flipz'; allowed keys here: "
                                                   "enabled, flips, rot90"),
    ({"train": 3}, "train: input should be a valid dictionary"),
])
def test_more_errors_name_the_key(overrides, needle):
    with pytest.raises(BioflowError) as err:
        config.validate(_cfg(**overrides))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_the_schema_lists_exactly_the_registered_workflows():
    from bioflow import workflows
    assert sorted(config.WORKFLOWS) == workflows.names()


@pytest.mark.parametrize("flips, ndim, ok", [
    (["x"], 2, True), (["x", "y"], 2, True), (["x", "y", "z"], 3, True), ([], 2, True), (True, 3, True),
    (["z"], 2, False), (["x", "x"], 2, False), (["w"], 2, False), ("x", 2, False),
])
def test_flips_per_axis(flips, ndim, ok):
    patch = [8, 8, 8][:ndim]
    cfg = _cfg(experiment={"ndim": ndim}, data={"patch_size": patch}, train={"augmentation": {"flips": flips}})
    if ok:
        assert config.validate(cfg)["train"]["augmentation"]["flips"] == flips
    else:
        with pytest.raises(BioflowError) as err:
            config.validate(cfg)
        assert "train.augmentation.flips" in str(err.value)


def test_flips_from_the_command_line():
    cfg = config.validate(_cfg(train={"augmentation": {"flips": "[x]"}}))
    assert cfg["train"]["augmentation"]["flips"] == ["x"]
