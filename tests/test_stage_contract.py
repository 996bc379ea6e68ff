"""The per-stage config contract (issue: one workflow, one module): every stage of every
workflow declares the keys it reads, gets exactly that slice, and a key change reruns exactly
the stages whose slice holds it. Fast: no Snakemake, no training."""

from __future__ import annotations

import ast
import copy
import pathlib

import pytest

from bioflow import workflows
from bioflow.config import validate
from bioflow.errors import BioflowError
from bioflow.stage import StageConfig, slice_config

REPO = pathlib.Path(__file__).resolve().parents[1]

BASE = {
    "classification": {"data": {"train": "t", "test": "s"}, "model": {"architecture": "simple_cnn"}},
    "semantic_segmentation": {"data": {"train": "t", "test": "s"}, "model": {"architecture": "unet"},
                              "inference": {"padding": 8}},
    "patch_classification": {"data": {"train": "t", "test": "s"}, "model": {"architecture": "resnet18"}},
}
# What never changes a trained model: the test set, how prediction / evaluation / reports run,
# and how fast training runs.
NEVER_RETRAIN = ("data.test", "data.test_has_labels", "inference", "postprocess", "metrics", "report",
                 "train.num_workers", "train.n_sample_images", "experiment.run_ids", "experiment.result_dir",
                 "export")


def full_config(workflow: str) -> dict:
    cfg = copy.deepcopy(BASE[workflow])
    cfg["experiment"] = {"name": "x", "workflow": workflow}
    return validate(cfg)


def leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not k.endswith("kwargs"):
            yield from leaves(v, key + ".")
        else:
            yield key, v


def perturbed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_changed"
    if isinstance(value, list):
        return value + value[-1:] if value else [1]
    if isinstance(value, dict):
        return {**value, "changed": 1}
    return "changed"


def set_key(cfg: dict, dotted: str, value) -> dict:
    out = copy.deepcopy(cfg)
    *path, last = dotted.split(".")
    node = out
    for p in path:
        node = node[p]
    node[last] = value
    return out


def within(key: str, declared) -> bool:
    return any(key == d or key.startswith(d + ".") for d in declared)


CASES = [(name, stage) for name in workflows.names() for stage in workflows.get(name).all_stages()]


@pytest.mark.parametrize("workflow, stage", CASES, ids=[f"{w}-{s}" for w, s in CASES])
def test_a_key_change_reruns_a_stage_exactly_when_its_slice_holds_the_key(workflow, stage):
    """Generated from the schema: every leaf key of the config, perturbed."""
    wf = workflows.get(workflow)
    cfg = full_config(workflow)
    before = wf.params(stage, cfg)
    declared, runtime = wf.keys(stage), wf.runtime_keys(stage)
    for key, value in leaves(cfg):
        changed = wf.params(stage, set_key(cfg, key, perturbed(value))) != before
        # runtime keys are read but never tracked
        assert changed == (within(key, declared) and not within(key, runtime)), (stage, key)


@pytest.mark.parametrize("workflow", [w for w in workflows.names() if "train" in workflows.get(w).all_stages()])
def test_training_depends_on_nothing_about_the_test_set_or_inference(workflow):
    wf = workflows.get(workflow)
    cfg = full_config(workflow)
    for key, value in leaves(cfg):
        if within(key, NEVER_RETRAIN):
            for stage in ("train", "norm_stats", "validate_train"):
                assert wf.params(stage, set_key(cfg, key, perturbed(value))) == wf.params(stage, cfg), (stage, key)
    # and the converse: what builds the model is in training's slice
    for key in ("model.architecture", "data.patch_size", "data.channels", "train.lr", "train.epochs"):
        assert within(key, wf.keys("train")), key


def test_the_resume_hash_ignores_the_test_set_and_resume_neutral_keys():
    from bioflow.training.engine import config_hash
    wf = workflows.get("classification")
    cfg = full_config("classification")
    h = config_hash(wf.params("train", cfg))
    for key, value in (("data.test", "elsewhere"), ("inference.tta", True), ("train.epochs", 7),
                       ("train.patience", 3)):
        assert config_hash(wf.params("train", set_key(cfg, key, value))) == h, key
    assert config_hash(wf.params("train", set_key(cfg, "train.lr", 0.5))) != h


def test_stage_config_refuses_keys_outside_its_slice():
    cfg = StageConfig(slice_config(full_config("classification"), ["model.architecture", "train"]), "train")
    assert cfg["model"]["architecture"] == "simple_cnn" and cfg["train"]["lr"] > 0
    with pytest.raises(BioflowError, match=r"stage 'train': reads config key 'data'"):
        cfg["data"]
    with pytest.raises(BioflowError, match=r"'model.n_classes'"):
        cfg["model"].get("n_classes", 2)  # no silent default either
    with pytest.raises(BioflowError, match="read-only"):
        cfg["train"]["lr"] = 1.0
    plain = copy.deepcopy(cfg)
    assert type(plain) is dict and type(plain["train"]) is dict and plain["train"]["lr"] == cfg["train"]["lr"]


def test_unknown_stage_key_is_a_clear_error():
    with pytest.raises(BioflowError, match="stage key 'train.nope'"):
        slice_config(full_config("classification"), ["train.nope"])


def test_unknown_workflow_lists_the_registered_ones():
    with pytest.raises(BioflowError, match="classification, patch_classification, semantic_segmentation"):
        workflows.get("segmentation")


def _compared_names(path: pathlib.Path, names: set[str]) -> list[str]:
    """Workflow names used as literals in comparisons / membership tests in a Python source."""
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for part in [node.left, *node.comparators]:
                elts = part.elts if isinstance(part, (ast.Tuple, ast.List, ast.Set)) else [part]
                for e in elts:
                    if isinstance(e, ast.Constant) and e.value in names:
                        found.append(f"{path.relative_to(REPO)}:{node.lineno}: {e.value}")
    return found


def test_only_the_workflow_modules_compare_workflow_names():
    names = set(workflows.names())
    sources = [p for p in (REPO / "bioflow").rglob("*.py") if "workflows" not in p.parts]
    sources += [REPO / "Snakefile", *(REPO / "workflow").rglob("*.smk"), *(REPO / "workflow").rglob("*.py")]
    found = []
    for p in sources:
        if p.suffix == ".py":
            found += _compared_names(p, names)
        else:  # Snakemake files: a plain text search for a quoted name
            found += [f"{p.relative_to(REPO)}: {n}" for n in names if f'"{n}"' in p.read_text()]
    assert not found, "workflow names compared outside bioflow/workflows: " + "; ".join(found)
