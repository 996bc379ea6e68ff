"""Experiment config: load a YAML, validate it, fill in defaults.

Usable without Snakemake: ``cfg = bioflow.config.load("my.yaml")``. The Snakefile calls
:func:`validate` on its ``config`` so the same checks run when the DAG is built.

Keys, types, defaults and descriptions live in :mod:`bioflow.config_model` only; the JSON schema
files are generated from it (``python -m bioflow.config --write-schema``).
"""

from __future__ import annotations

import argparse
import copy
import sys
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import GenerateJsonSchema

from bioflow.config_model import Config, Workflow
from bioflow.errors import BioflowError

WORKFLOWS = typing.get_args(Workflow)

# Both are the generated schema (the second, where the Snakemake workflow catalog looks, is a
# symlink to the first).
SCHEMA_FILES = ("bioflow/schemas/config.schema.yaml", "workflow/schemas/config.schema.yaml")
_SCHEMA_HEADER = """\
# GENERATED from bioflow/config_model.py by `python -m bioflow.config --write-schema`; do not edit.
# JSON schema of a bioflow experiment config (one YAML per experiment): every key, its type, the
# values it allows, its default and what it does. Sections left out of a config get their
# defaults; unknown keys are rejected (additionalProperties: false) to catch typos.
"""


# --- the JSON schema, generated from the models ---------------------------------------------

class _SchemaGenerator(GenerateJsonSchema):
    def field_title_should_be_set(self, schema) -> bool:
        return False  # "Lr", "Batch Size": the key itself says it


@lru_cache(maxsize=1)
def schema() -> dict:
    """The JSON schema (draft 2020-12) of an experiment config."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **Config.model_json_schema(schema_generator=_SchemaGenerator)}


def schema_text() -> str:
    return _SCHEMA_HEADER + yaml.safe_dump(schema(), sort_keys=False, width=100, allow_unicode=True)


def write_schema(repo: str | Path) -> list[Path]:
    """Write the generated schema to every path in :data:`SCHEMA_FILES` under ``repo``."""
    text = schema_text()
    written = []
    for rel in SCHEMA_FILES:
        path = (Path(repo) / rel).resolve()  # workflow/schemas/ holds a symlink to bioflow/schemas/
        if not path.parent.is_dir():
            raise BioflowError(f"{path.parent}: folder not found; run --write-schema in a bioflow checkout")
        if path not in written:
            path.write_text(text)
            written.append(path)
    return written


# --- reading the models' annotations ---------------------------------------------------------

def _members(ann) -> list:
    """The alternatives of an annotation: Annotated stripped, unions flattened."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _members(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(ann) for m in _members(a)]
    return [ann]


def _model_of(members) -> type[BaseModel] | None:
    return next((m for m in members if isinstance(m, type) and issubclass(m, BaseModel)), None)


def _list_item(members):
    """Item annotation of the list alternative, or None when a list is not allowed."""
    lst = next((m for m in members if typing.get_origin(m) is list), None)
    return typing.get_args(lst)[0] if lst is not None else None


def _literal_values(members) -> list:
    return [v for m in members if typing.get_origin(m) is Literal for v in typing.get_args(m)]


def _takes_string(members, value: str) -> bool:
    return any(m is str or m is Any for m in members) or value in _literal_values(members)


# --- command-line strings -> the key's type --------------------------------------------------

_YAML_NULLS = ("null", "Null", "NULL", "~")


def _from_string(text: str, members) -> Any:
    """``text`` read as YAML (``"0.5"`` -> 0.5, ``"[1, 2]"`` -> [1, 2], ``"null"`` -> None);
    ``text`` itself when it does not read as a value of another type."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, bool) and text.strip().lower() not in ("true", "false"):
        return text  # YAML 1.1 "yes"/"on"/"y" are not booleans here
    if isinstance(value, str) and float in members:
        try:
            return float(text)  # "1e-4": YAML 1.1 reads a float only with a dot
        except ValueError:
            return text
    return value


def _coerce(value: Any, ann) -> Any:
    """``value`` with every string where the model expects another type read as YAML.

    ``snakemake --config 'train={"lr": 0.5}'`` hands nested values over as strings. A string
    key keeps its string, except that "null" is None where a key allows None (so
    ``data={"val": null}`` works; a folder called null is ``./null``). Values that still do not
    fit are left for the model to report.
    """
    members = _members(ann)
    if isinstance(value, str):
        if value.strip() in _YAML_NULLS and type(None) in members:
            return None
        if _takes_string(members, value):
            return value
        parsed = _from_string(value, members)
        return value if isinstance(parsed, str) else _coerce(parsed, ann)
    if isinstance(value, dict):
        model = _model_of(members)
        if model is None:
            return value
        fields = model.model_fields
        return {k: _coerce(v, fields[k].annotation) if k in fields else v for k, v in value.items()}
    if isinstance(value, list):
        item = _list_item(members)
        return value if item is None else [_coerce(v, item) for v in value]
    return value


# --- error messages ----------------------------------------------------------------------

def _walk(loc) -> tuple[list[str], Any]:
    """Pydantic's error location -> (config key path, annotation there); union tags dropped."""
    ann, path = Config, []
    for el in loc:
        members = _members(ann)
        model = _model_of(members)
        if isinstance(el, str) and model is not None and el in model.model_fields:
            path.append(el)
            ann = model.model_fields[el].annotation
        elif isinstance(el, int):
            path.append(str(el))
            ann = _list_item(members) or Any
        # else: a union member's tag such as "literal['auto']" or "constrained-int"
    return path, ann


def _dotted(path) -> str:
    return ".".join(path) or "<top level>"


def _message(err: dict) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


def _describe(errors: list[dict]) -> list[str]:
    """One line per config key, in the order pydantic reports them."""
    by_key: dict[str, list[dict]] = {}
    extra = []
    for err in errors:
        if err["type"] == "extra_forbidden":
            path, ann = _walk(err["loc"][:-1])
            model = _model_of(_members(ann))
            allowed = ", ".join(model.model_fields) if model else "?"
            extra.append(f"unknown key '{_dotted([*path, str(err['loc'][-1])])}'; allowed keys here: {allowed}")
            continue
        path, ann = _walk(err["loc"])
        by_key.setdefault(_dotted(path), []).append(err | {"ann": ann})
    out = []
    for key, errs in by_key.items():
        first = errs[0]
        if (all(e["type"] == "literal_error" or e["type"].endswith("_type") for e in errs)
                and any(k.startswith(key + ".") for k in by_key)):
            continue  # a union whose list alternative reported the item at fault

        if first["type"] == "missing":
            out.append(f"{key}: missing; this key is required")
        elif all(e["type"] == "literal_error" for e in errs) and len(errs) == 1:
            out.append(f"{key}: {first['input']!r} is not allowed; use one of "
                       f"{_literal_values(_members(first['ann']))}")
        elif len(errs) == 1:
            out.append(f"{key}: {_message(first)} (got {first['input']!r})")
        else:  # a union: what each alternative wanted
            out.append(f"{key}: {first['input']!r} is not allowed; "
                       + ", or ".join(dict.fromkeys(_message(e) for e in errs)))
    return extra + out


# --- validation ---------------------------------------------------------------------------

def _replace_in_place(dst: dict, src: dict) -> None:
    for k in [k for k in dst if k not in src]:
        del dst[k]
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _replace_in_place(dst[k], v)
        else:
            dst[k] = v


def validate(cfg: dict, source: str | Path = "config") -> dict:
    """Validate ``cfg`` in place (strings coerced, defaults filled in) and return it.

    The result holds plain dict / list / str / int / float / bool / None values only.
    Raises :class:`BioflowError` listing every problem, each with its key path.
    """
    if not isinstance(cfg, dict):
        raise BioflowError(f"{source}: the config must be a YAML mapping, got {type(cfg).__name__}")
    try:
        model = Config.model_validate(_coerce(copy.deepcopy(cfg), Config))
    except ValidationError as exc:
        raise BioflowError(f"{source}: invalid config", _describe(exc.errors())) from None
    # warnings off: an int kept in a float key (see config_model.Num) is expected there
    _replace_in_place(cfg, model.model_dump(mode="python", warnings=False))
    _check_semantics(cfg, source)
    return cfg


def _check_semantics(cfg: dict, source) -> None:
    """Cross-key rules every workflow shares (each workflow adds its own in
    ``Workflow.check_config``; ``bioflow.workflows.validate_config`` runs both)."""
    problems = []
    ndim = cfg["experiment"]["ndim"]
    # predict-only (model.checkpoint): no training data; the model keys come from the checkpoint
    # (bioflow.workflows.validate_config fills them in)
    trains = not cfg["model"]["checkpoint"]
    if trains and not cfg["data"]["train"] and not cfg["data"]["csv"]:
        problems.append("data.train: missing; give the training folder (or data.csv for a CSV / .npz)")
    if trains and not cfg["model"]["architecture"]:
        problems.append("model.architecture: missing; name a registered model (or give model.checkpoint "
                        "to predict with a trained one)")
    if trains and len(cfg["data"]["patch_size"]) != ndim:
        problems.append(f"data.patch_size: has {len(cfg['data']['patch_size'])} values but "
                        f"experiment.ndim is {ndim}; give [y, x] in 2D or [z, y, x] in 3D")
    cw = cfg["train"]["class_weights"]
    if trains and isinstance(cw, list) and len(cw) != cfg["model"]["n_classes"]:
        problems.append(f"train.class_weights: {len(cw)} weights for model.n_classes="
                        f"{cfg['model']['n_classes']}; give one per class or 'auto'")
    flips = cfg["train"]["augmentation"]["flips"]
    if trains and ndim == 2 and isinstance(flips, list) and "z" in flips:
        problems.append("train.augmentation.flips: z is not an axis of a 2D image (experiment.ndim: 2); "
                        "give x and / or y")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bioflow.config",
                                     description="Generate the config JSON schema from bioflow/config_model.py.")
    parser.add_argument("--write-schema", action="store_true",
                        help=f"write it to {' and '.join(SCHEMA_FILES)}")
    args = parser.parse_args(argv)
    if args.write_schema:
        for path in write_schema(Path(__file__).resolve().parents[1]):
            print(f"wrote {path}")
    else:
        sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
