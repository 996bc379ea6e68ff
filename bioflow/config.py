"""Experiment config: load a YAML, validate it against the JSON schema, fill in defaults.

Usable without Snakemake: ``cfg = bioflow.config.load("my.yaml")``. The Snakefile calls
:func:`validate` on its ``config`` so the same checks run when the DAG is built.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from bioflow.errors import BioflowError

WORKFLOWS = ("classification", "semantic_segmentation", "patch_classification")


@lru_cache(maxsize=1)
def schema() -> dict:
    text = resources.files("bioflow").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _with_defaults(validator_cls):
    """Extend a jsonschema validator so that validating also fills ``default`` values in.

    The recipe from the jsonschema FAQ; nested objects with ``default: {}`` get their own
    defaults because the parent default is inserted before its properties are visited.
    """
    validate_properties = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema_):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema_)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _key_path(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return path or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = f"{key}." if key != "<top level>" else ""
        return (f"unknown key '{where}{extra[0] if extra else '?'}'; allowed keys here: "
                f"{', '.join(allowed)}")
    if error.validator == "required":
        return f"{key}: {error.message}"
    if error.validator == "enum":
        return f"{key}: {error.instance!r} is not allowed; use one of {error.validator_value}"
    return f"{key}: {error.message}"


def validate(cfg: dict, source: str | Path = "config") -> dict:
    """Validate ``cfg`` in place (defaults filled in) and return it.

    Raises :class:`BioflowError` listing every problem, each with its key path.
    """
    if not isinstance(cfg, dict):
        raise BioflowError(f"{source}: the config must be a YAML mapping, got {type(cfg).__name__}")
    errors = sorted(_Validator(schema()).iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        raise BioflowError(f"{source}: invalid config", [_describe(e) for e in errors])
    _check_semantics(cfg, source)
    return cfg


def _check_semantics(cfg: dict, source) -> None:
    """Rules a JSON schema cannot express neatly: cross-key consistency."""
    problems = []
    ndim = cfg["experiment"]["ndim"]
    wf = cfg["experiment"]["workflow"]
    if not cfg["data"]["train"] and not cfg["data"]["csv"]:
        problems.append("data.train: missing; give the training folder (or data.csv for a CSV / .npz)")
    if len(cfg["data"]["patch_size"]) != ndim:
        problems.append(f"data.patch_size: has {len(cfg['data']['patch_size'])} values but "
                        f"experiment.ndim is {ndim}; give [y, x] in 2D or [z, y, x] in 3D")
    pad = cfg["inference"]["padding"]
    if wf == "semantic_segmentation" and 2 * pad >= min(cfg["data"]["patch_size"]):
        # Caught here, not at inference time after training: tiles keep no core otherwise.
        problems.append(f"inference.padding: {pad} leaves no tile core for data.patch_size "
                        f"{cfg['data']['patch_size']}; use a padding below half the smallest patch side")
    if cfg["model"]["multilabel"] and not cfg["data"]["labels_csv"]:
        problems.append("model.multilabel: true needs data.labels_csv (one 0/1 column per label)")
    if cfg["model"]["multilabel"] and wf != "classification":
        problems.append("model.multilabel: only the classification workflow is multi-label")
    if wf == "semantic_segmentation" and cfg["model"]["n_classes"] < 2:
        problems.append("model.n_classes: segmentation needs at least 2 (background + foreground)")
    if wf == "classification" and not cfg["model"]["multilabel"] and cfg["model"]["n_classes"] < 2:
        problems.append("model.n_classes: single-label classification needs at least 2 classes")
    cw = cfg["train"]["class_weights"]
    if isinstance(cw, list) and len(cw) != cfg["model"]["n_classes"]:
        problems.append(f"train.class_weights: {len(cw)} weights for model.n_classes="
                        f"{cfg['model']['n_classes']}; give one per class or 'auto'")
    if cfg["data"]["csv"] and wf != "classification":
        problems.append("data.csv: CSV / .npz input is for the classification workflow")
    if cfg["data"]["metadata_csv"] and wf != "classification":
        problems.append("data.metadata_csv: metadata fusion is for the classification workflow")
    if problems:
        raise BioflowError(f"{source}: invalid config", problems)


def load(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a YAML experiment config, apply ``overrides`` (nested dict), validate, fill defaults."""
    path = Path(path)
    if not path.is_file():
        raise BioflowError(f"{path}: config file not found; pass the path of your experiment YAML")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BioflowError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if overrides:
        cfg = deep_update(cfg, overrides)
    return validate(cfg, source=path)


def deep_update(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# --- output layout (BiaPy's, see DESIGN.md) -------------------------------------------

def output_root(cfg: dict) -> Path:
    return Path(cfg["experiment"]["result_dir"]) / cfg["experiment"]["name"]


def run_dir(cfg: dict, run_id: int | str) -> Path:
    name = cfg["experiment"]["name"]
    return output_root(cfg) / "results" / f"{name}_{run_id}"


def data_paths(cfg: dict) -> dict[str, Any]:
    """The train/val/test folders the stages read.

    With ``data.csv`` set, csv_to_folders writes the class folders under
    ``<output>/prepared/folders/`` and those replace the configured paths.
    """
    d = cfg["data"]
    if d["csv"]:
        root = output_root(cfg) / "prepared" / "folders"
        return {"train": str(root / "train"), "val": str(root / "val") if d["val"] is None else d["val"],
                "test": str(root / "test") if d["test"] is None else d["test"]}
    return {"train": d["train"], "val": d["val"], "test": d["test"]}
