"""The Snakemake DAG: dry-runs for the demo and every template, lint, config errors at DAG build."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "config" / "templates").glob("*.yaml"))


def snakemake(*args, cwd=ROOT):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--cores", "1", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def jobs_of(dry_run_stdout: str) -> dict[str, int]:
    """Parse the 'Job stats' table of `snakemake -n`."""
    lines = dry_run_stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats"))
    jobs = {}
    for line in lines[start + 3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


def test_demo_dry_run_has_every_stage(tmp_path):
    # in a fresh folder, not the repository: a `make demo` there would leave nothing to do
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["data"]["csv"] = str(ROOT / cfg["data"]["csv"])
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake("-n", "--configfile", str(tmp_path / "demo.yaml"), "--directory", str(tmp_path))
    assert res.returncode == 0, res.stderr
    jobs = jobs_of(res.stdout)
    assert {"csv_to_folders", "validate_train", "validate_test", "norm_stats", "train", "predict", "metrics", "report"} <= set(jobs)


def test_command_line_overrides_alone_keep_the_demo_config(tmp_path):
    """`snakemake -n --config 'inference={"tta": true}'` in a checkout: the demo stays the config
    and the override goes on top (the default was dropped as soon as --config gave any key)."""
    import shutil
    for name in ("config", "demo_data"):  # a fresh checkout's demo inputs, not the repository's results
        shutil.copytree(ROOT / name, tmp_path / name)
    res = snakemake("-n", "--config", 'inference={"tta": true}', "--directory", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert {"train", "predict", "report"} <= set(jobs_of(res.stdout))


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_template_dry_runs(template, tmp_path):
    cfg = yaml.safe_load(template.read_text())
    cfg["experiment"]["run_ids"] = [1, 2]
    if cfg["data"].get("cv_folds"):  # the run ids are the folds
        cfg["data"]["cv_folds"] = 2
    cfg["experiment"]["result_dir"] = str(tmp_path / "results")
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    res = snakemake("-n", "--configfile", str(cfgfile), "--directory", str(tmp_path))
    assert res.returncode == 0, res.stderr + res.stdout
    jobs = jobs_of(res.stdout)
    if cfg["experiment"]["workflow"] == "patch_classification":
        assert "patch_dataset" in jobs
    else:
        # two runs and their ensemble, evaluated as a third
        assert jobs["train"] == 2 and jobs["predict"] == 2 and jobs["ensemble"] == 1 and jobs["metrics"] == 3
        assert jobs["report"] == 1
    if cfg["experiment"]["workflow"] == "semantic_segmentation":
        assert ("postprocess" in jobs) == bool(cfg["postprocess"]["z_filter"] or cfg["postprocess"]["yz_filter"])


def test_user_configfile_does_not_inherit_demo_keys(tmp_path):
    # semseg has no data.csv; if the demo config leaked in, validation would reject data.csv.
    cfg = yaml.safe_load((ROOT / "config" / "templates" / "semseg_2d.yaml").read_text())
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    res = snakemake("-n", "--configfile", str(cfgfile), "--directory", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "csv_to_folders" not in jobs_of(res.stdout)


def test_lint_all_clear():
    res = snakemake("--lint")
    assert res.returncode == 0
    assert "Congratulations, your workflow is in a good condition!" in res.stdout + res.stderr


def test_bad_config_fails_at_dag_build_naming_the_key(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["train"]["scheduler"] = "cosine"
    cfg["inference"]["overlpa"] = 0.5
    cfgfile = tmp_path / "bad.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    res = snakemake("-n", "--configfile", str(cfgfile), "--directory", str(ROOT))
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "train.scheduler" in out and "unknown key 'inference.overlpa'" in out


def test_every_rule_has_log_and_params():
    import re

    text = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    n_rules = len(re.findall(r"^\s*rule \w+:$", text, re.M))
    assert n_rules >= 9
    assert len(re.findall(r"^\s+log:$", text, re.M)) == n_rules
    assert len(re.findall(r"^\s+params:$", text, re.M)) == n_rules
