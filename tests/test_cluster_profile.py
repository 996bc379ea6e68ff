"""`bioflow profile install slurm`: `snakemake --profile slurm` as cluster users type it, with
`--profile profiles/slurm` of a checkout still working."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from bioflow import cli, cluster_profile
from bioflow.errors import BioflowError
from helpers_snakemake import REPO, SNAKEFILE, clean_env, job_counts, tiny_demo_config


def test_install_writes_where_snakemake_looks_with_the_site_values(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert cluster_profile.user_profile_dir() == tmp_path / "xdg" / "snakemake"
    assert cli.main(["profile", "install", "slurm", "--account", "lab_1", "--partition", "cpu-short",
                     "--gpu-partition", "a100"]) == 0
    path = tmp_path / "xdg" / "snakemake" / "slurm" / "config.yaml"
    text = path.read_text()
    profile = yaml.safe_load(text)
    assert profile["executor"] == "slurm"
    assert profile["default-resources"]["slurm_account"] == "lab_1"
    assert profile["default-resources"]["slurm_partition"] == "cpu-short"
    assert profile["set-resources"]["train"]["slurm_partition"] == "a100"
    assert profile["set-resources"]["predict"]["slurm_partition"] == "a100"
    assert "# EDIT" in text  # the template's guidance stays for later edits
    # an existing profile is the user's: kept unless --force
    assert cli.main(["profile", "install", "slurm"]) == 1
    assert path.read_text() == text
    assert cli.main(["profile", "install", "slurm", "--force"]) == 0
    fresh = yaml.safe_load(path.read_text())
    assert "slurm_account" not in fresh["default-resources"]  # left out: no account asked for
    assert fresh["set-resources"]["train"]["slurm_partition"] == "gpu"


def test_a_bad_name_is_refused():
    with pytest.raises(BioflowError, match="--account: 'a b' is not a SLURM name"):
        cluster_profile.render("slurm", account="a b")


def test_the_checkout_profile_is_the_installed_template():
    assert (REPO / "profiles" / "slurm" / "config.yaml").resolve() == cluster_profile.TEMPLATES["slurm"]


def _dry_run(profile: str, tmp_path, cwd, **env) -> subprocess.CompletedProcess:
    cfg = tiny_demo_config(tmp_path / "tiny.yaml")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(tmp_path / "work"),
           "--configfile", str(cfg), "--profile", profile, "-n"]
    return subprocess.run(cmd, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_snakemake_finds_the_bare_profile_name_once_installed(tmp_path):
    xdg = tmp_path / "xdg"
    before = _dry_run("slurm", tmp_path, tmp_path, XDG_CONFIG_HOME=xdg)
    assert before.returncode != 0 and "no profile.yaml (or config.yaml) found" in before.stderr
    cluster_profile.install("slurm", account="lab", root=xdg / "snakemake")
    after = _dry_run("slurm", tmp_path, tmp_path, XDG_CONFIG_HOME=xdg)
    assert after.returncode == 0, after.stderr[-3000:]
    assert job_counts(after.stdout + after.stderr)["train"] == 2
    # and the checkout's profile by its relative path, as before
    checkout = _dry_run("profiles/slurm", tmp_path, REPO, XDG_CONFIG_HOME=tmp_path / "empty")
    assert checkout.returncode == 0, checkout.stderr[-3000:]
    assert job_counts(checkout.stdout + checkout.stderr)["train"] == 2
