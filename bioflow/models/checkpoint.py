"""A bioflow checkpoint (the train stage's ``-best.ckpt``): what it holds, and the model rebuilt from it.

The train stage writes ``hyper_parameters`` into every checkpoint: ``cfg`` (the train stage's
config slice: architecture and its arguments, ``experiment.ndim``, ``data.channels``,
``data.patch_size``, normalization and the other training-time data settings), ``class_names``,
``normalization`` (the training statistics), ``model_extra`` (extra ``build_model`` arguments)
``provenance`` and, for binary and multi-label classifiers, ``validation`` (decision thresholds
chosen on the best epoch's validation probabilities, :mod:`bioflow.metrics.thresholds`).
Prediction needs nothing else, which is what makes a predict-only experiment
(``model.checkpoint``) possible. Here, below training, so inference needs no training code.
"""

from __future__ import annotations

import copy
from pathlib import Path

from bioflow.errors import BioflowError
from bioflow.models.registry import build_model
from bioflow.models.serialization import load_tensors


def load(path, what: str = "model.checkpoint") -> dict:
    """The checkpoint dict, loaded with ``weights_only=True`` (plain data and tensors only: a
    checkpoint from elsewhere cannot run code; see :mod:`bioflow.models.serialization`)."""
    p = Path(path)
    if not p.is_file():
        raise BioflowError(f"{what}: {p} not found; give the path of a bioflow checkpoint "
                           f"(results/<experiment>/checkpoints/<experiment>_<run_id>-best.ckpt)")
    ck = load_tensors(p, what)
    if not isinstance(ck, dict) or "cfg" not in (ck.get("hyper_parameters") or {}):
        raise BioflowError(f"{what}: {p} is not a bioflow checkpoint (no training config in it); give a "
                           f"-best.ckpt written by the train stage")
    return ck


def hparams(path, what: str = "model.checkpoint") -> dict:
    """The ``hyper_parameters`` of a bioflow checkpoint."""
    return load(path, what)["hyper_parameters"]


def describe(hp: dict) -> str:
    """One line on what a model expects: workflow, ndim, channels, classes."""
    cfg = hp["cfg"]
    names = hp.get("class_names") or []
    return (f"a {cfg['experiment']['ndim']}D {cfg['experiment']['workflow']} model, "
            f"{cfg['data']['channels']} channel(s), {len(names)} classes {list(names)}")


def load_model_from_checkpoint(ckpt_path, map_location="cpu"):
    """(model in eval mode, hyper_parameters) from a checkpoint written by the train stage."""
    ck = load(ckpt_path, what="checkpoint")
    hp = ck["hyper_parameters"]
    cfg = copy.deepcopy(hp["cfg"])
    cfg["model"]["weights"] = None  # the checkpoint's own weights follow
    cfg["model"]["pretrained"] = False
    model = build_model(cfg, **(hp.get("model_extra") or {}))
    state = {k[len("model."):]: v for k, v in ck["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    model.to(map_location).eval()
    return model, hp
