"""Rebuild a trained model from a bioflow checkpoint (the train stage's ``-best.ckpt``).

Checkpoints carry ``hyper_parameters`` with at least ``cfg`` (the config sections the model
was trained with) and ``model_extra`` (keyword arguments of ``build_model``), so the model is
rebuilt from the file alone. Here, below training, so inference needs no training code.
"""

from __future__ import annotations

import copy
from pathlib import Path

from bioflow.errors import BioflowError
from bioflow.models.registry import build_model
from bioflow.models.serialization import load_tensors


def load_model_from_checkpoint(ckpt_path, map_location="cpu"):
    """(model in eval mode, hyper_parameters) from a checkpoint written by the train stage."""
    p = Path(ckpt_path)
    if not p.is_file():
        raise BioflowError(f"{p}: checkpoint not found; run the train stage first")
    ck = load_tensors(p, "checkpoint")  # weights_only: bioflow checkpoints hold tensors + plain data
    hp = ck.get("hyper_parameters") if isinstance(ck, dict) else None
    if not hp or "cfg" not in hp:
        raise BioflowError(f"{p}: not a bioflow checkpoint (no cfg in hyper_parameters); retrain")
    cfg = copy.deepcopy(hp["cfg"])
    cfg["model"]["weights"] = None  # the checkpoint's own weights follow
    cfg["model"]["pretrained"] = False
    model = build_model(cfg, **(hp.get("model_extra") or {}))
    state = {k[len("model."):]: v for k, v in ck["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    model.to(map_location).eval()
    return model, hp
