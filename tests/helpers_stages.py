"""Running bioflow stages from Python in tests, as the rules do: each stage on its config slice
alone (``Workflow.call``), on the experiment's standard paths."""

from __future__ import annotations

from pathlib import Path

from bioflow import workflows
from bioflow.stage import Job


def validate_run(cfg: dict, manifest_path) -> dict:
    """Both validation stages (train part, test part) into ``manifest_path``'s folder; returns
    one dict with every split (train / val from the train part, test from the test part) for
    assertions. Raises the combined BioflowError listing the problems of both parts."""
    manifest_path = Path(manifest_path)
    prepared = manifest_path.parent / manifest_path.stem
    wf = workflows.get(cfg["experiment"]["workflow"])
    train, test = wf.validate_dataset(cfg, prepared)
    merged = dict(train)
    merged["splits"] = {**train["splits"], "test": (test or {}).get("splits", {}).get("test", [])}
    merged["counts"] = {**train["counts"], **((test or {}).get("counts") or {})}
    merged["data_paths"] = {**train["data_paths"], **((test or {}).get("data_paths") or {"test": None})}
    if test:
        merged["test_has_labels"] = test["test_has_labels"]
    return merged


def prepare(cfg: dict) -> None:
    """validate_train, validate_test (with a test set), norm_stats and save_config, on the
    standard paths."""
    wf = workflows.get(cfg["experiment"]["workflow"])
    for stage in ("csv_to_folders", "validate_train", "validate_test", "norm_stats", "save_config"):
        if wf.runs(stage, cfg):
            wf.call(stage, cfg)


def call(cfg: dict, stage: str, run_id: int | None = None, job: Job | None = None):
    """One stage on its slice of ``cfg`` (standard paths unless ``job`` is given)."""
    return workflows.get(cfg["experiment"]["workflow"]).call(stage, cfg, job, run_id)


def job(cfg: dict, stage: str, run_id: int | None = None) -> Job:
    return workflows.get(cfg["experiment"]["workflow"]).job(stage, cfg, run_id)
