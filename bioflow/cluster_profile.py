"""``bioflow profile install slurm``: the site's SLURM profile where Snakemake looks for a bare
profile name, so cluster users type ``snakemake --profile slurm`` as the Snakemake docs say.

Snakemake resolves ``--profile NAME`` in the current folder, then the user's config folder
(``$XDG_CONFIG_HOME/snakemake``, else ``~/.config/snakemake`` on Linux), then the site's
(``/etc/xdg/snakemake``); the folders come from Snakemake itself, so the profile lands where
the installed Snakemake will find it. The profile is ``bioflow/profiles/slurm.yaml`` (which
``profiles/slurm/config.yaml`` of a checkout links to) with the account and partitions filled in;
its comments stay, so the user can edit the rest later.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bioflow.errors import BioflowError
from bioflow.io import write_text

TEMPLATES = {"slurm": Path(__file__).resolve().parent / "profiles" / "slurm.yaml"}
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def user_profile_dir() -> Path:
    """Snakemake's user config folder (where a bare ``--profile NAME`` is looked up)."""
    from snakemake.cli import get_appdirs  # the lookup Snakemake itself uses
    return Path(get_appdirs().user_config_dir)


def render(name: str, account: str | None = None, partition: str | None = None,
           gpu_partition: str | None = None) -> str:
    """The profile text with the given SLURM account / CPU partition / GPU partition set."""
    for key, value in (("--account", account), ("--partition", partition), ("--gpu-partition", gpu_partition)):
        if value is not None and not _NAME.match(value):
            raise BioflowError(f"{key}: {value!r} is not a SLURM name (letters, digits, _ . + -)")
    text = TEMPLATES[name].read_text()
    if account:
        text = re.sub(r'^(\s*)# slurm_account: "[^"]*"', rf'\1slurm_account: "{account}"', text, count=1, flags=re.M)
    if partition:
        text = re.sub(r'^(\s*)# slurm_partition: "[^"]*"', rf'\1slurm_partition: "{partition}"', text, count=1,
                      flags=re.M)
    if gpu_partition:  # the GPU stages' partition (set-resources)
        text = re.sub(r'^(\s+)slurm_partition: "gpu"', rf'\1slurm_partition: "{gpu_partition}"', text, flags=re.M)
    profile = yaml.safe_load(text)
    # the template's layout is what the substitutions rely on: check they took
    default, gpu = profile["default-resources"], profile["set-resources"]
    assert default.get("slurm_account") == account or not account, "template: slurm_account line changed"
    assert default.get("slurm_partition") == partition or not partition, "template: slurm_partition line changed"
    assert not gpu_partition or all(gpu[r]["slurm_partition"] == gpu_partition for r in ("train", "predict"))
    return text


def install(name: str, account: str | None = None, partition: str | None = None,
            gpu_partition: str | None = None, force: bool = False, root: Path | None = None) -> Path:
    """Write ``<root or the user's Snakemake config folder>/<name>/config.yaml``; an existing
    profile is kept unless ``force``."""
    dest = Path(root or user_profile_dir()) / name / "config.yaml"
    if dest.exists() and not force:
        raise BioflowError(f"{dest}: a '{name}' profile exists already; edit it, or rerun with --force to "
                           f"replace it")
    text = render(name, account, partition, gpu_partition)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return write_text(dest, text)
