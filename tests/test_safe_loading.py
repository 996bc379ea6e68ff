"""Safe loading: no file bioflow reads can run code (issue 12, point 7)."""

import ast
import re
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bioflow.errors import BioflowError
from bioflow.models import build_model
from bioflow.models.checkpoint import load_model_from_checkpoint
from bioflow.models.serialization import load_tensors
from bioflow.training.engine import BioflowModule, plain

ROOT = Path(__file__).resolve().parents[1]


def _cfg(weights=None):
    return {"experiment": {"workflow": "classification", "ndim": 2},
            "data": {"channels": 1, "patch_size": [16, 16]},
            "model": {"architecture": "simple_cnn", "n_classes": 2, "multilabel": False, "pretrained": False,
                      "weights": weights, "features": [4, 8], "dropout": 0.0, "dense_units": [],
                      "metadata_units": [8], "kwargs": {}}}


class _Payload:
    """Unpickling this creates ``marker``: what a crafted weights file could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Payload(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(BioflowError) as e:
        build_model(_cfg(str(evil)))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("model.weights: ") and str(evil) in msg
    assert "needs pickle" in msg and "python -c" in msg
    assert not marker.exists()
    # as a checkpoint too
    with pytest.raises(BioflowError, match="checkpoint: .*needs pickle"):
        load_model_from_checkpoint(evil)
    assert not marker.exists()


def test_the_conversion_command_makes_a_loadable_file(tmp_path):
    """The command in the message works on a trusted file (one holding a non-plain object)."""
    src = build_model(_cfg())
    path = tmp_path / "trusted.pt"
    torch.save({"state_dict": src.state_dict(), "note": Path("x")}, path)  # a Path needs pickle
    with pytest.raises(BioflowError) as e:
        load_tensors(path, "model.weights")
    cmd = re.search(r"convert it once: (python -c .*)$", str(e.value)).group(1)
    subprocess.run(cmd, shell=True, check=True, cwd=tmp_path, timeout=120)
    converted = tmp_path / "trusted.state_dict.pt"
    dst = build_model(_cfg(str(converted)))
    torch.testing.assert_close(dst.state_dict()["backbone.features.0.weight"],
                               src.state_dict()["backbone.features.0.weight"])


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_state_dict_and_safetensors_weights_load(tmp_path, fmt):
    src = build_model(_cfg())
    path = tmp_path / f"w.{fmt}"
    if fmt == "pt":
        torch.save(src.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, path)
    dst = build_model(_cfg(str(path)))
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v)


def test_not_a_weights_file_is_named(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a tensor file")
    with pytest.raises(BioflowError, match=r"model.weights: .*junk.safetensors is not a valid safetensors file"):
        build_model(_cfg(str(junk)))


def test_checkpoint_hyper_parameters_must_be_plain():
    assert plain({"a": [1, 2.0, "x", None, True], "b": {"c": (1,)}}) is not None
    with pytest.raises(TypeError, match=r"hparams.cfg.p: PosixPath"):
        BioflowModule(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss, {}, hparams={"cfg": {"p": Path("x")}})


def test_no_unsafe_load_anywhere_in_bioflow():
    """Every torch.load in bioflow is weights_only=True; YAML only through safe loaders; no pickle."""
    calls = 0
    for path in (ROOT / "bioflow").rglob("*.py"):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                calls += 1
                kw = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in kw and ast.literal_eval(kw["weights_only"]) is True, \
                    f"{path}:{node.lineno}: {ast.unparse(node)}"
        assert not re.search(r"yaml\.(load|full_load|unsafe_load)\(", text), path
        assert not re.search(r"^\s*import (pickle|joblib|dill)\b", text, re.M) or path.name == "serialization.py", path
        assert "allow_pickle=True" not in text, path
    assert calls == 1  # the one place bioflow reads torch files: bioflow.models.serialization
