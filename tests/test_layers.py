"""The layering contracts of pyproject.toml ([tool.importlinter]) hold, and they do catch a breach."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"


def _lint(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the bioflow package found under ``root``, with root's pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def test_import_contracts_are_kept():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.mark.parametrize("module,line,contract", [
    ("data/augment.py", "from bioflow.inference import tiling", "data never imports training or inference"),
    ("inference/tiling.py", "from bioflow.training import engine", "inference never imports training"),
    ("io.py", "from bioflow import geometry", "the bottom layer imports nothing above it"),
    ("models/registry.py", "from bioflow.models import classification", "no import cycles"),
])
def test_a_breach_is_reported(tmp_path, module, line, contract):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "bioflow", tmp_path / "bioflow", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "bioflow" / module
    target.write_text(target.read_text() + f"\n\ndef _breach():\n    {line}\n")  # function-level counts too
    res = _lint(tmp_path)
    assert res.returncode != 0
    assert any(ln.startswith(contract) and " BROKEN" in ln for ln in res.stdout.splitlines()), res.stdout
