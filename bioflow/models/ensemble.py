"""Several trained models as one: the mean of their probabilities (the ``ensemble`` stage).

:class:`Ensemble` is an ``nn.Module`` whose output, read as logits, gives the members' mean
probability: ``softmax(ensemble(x)) == mean_i softmax(member_i(x))`` (it returns the log of the
mean). Every inference path that applies a softmax to a model's output (tiling, streaming,
TTA, whole-image, per-patch passes, precision policies) thus averages the members' probabilities
without knowing it runs an ensemble; tiled blending is linear, so the blended map equals the
mean of the members' blended maps.
"""

from __future__ import annotations

import json
import math

import torch
from torch import nn

from bioflow.errors import BioflowError
from bioflow.models.checkpoint import load_model_from_checkpoint
from bioflow.models.segmentation import size_divisor


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        # inputs must suit every member
        self.size_divisor = math.lcm(*(size_divisor(m) for m in members))

    def forward(self, *args):
        mean = torch.stack([torch.softmax(m(*args).float(), dim=1) for m in self.members]).mean(0)
        return torch.log(mean)  # softmax(log p) = p, since p sums to 1 over dim 1


# what every member must share: one input preprocessing for all (normalization statistics,
# channels, patch geometry) and the same classes
SHARED = (("normalization",), ("class_names",), ("cfg", "data", "normalization"), ("cfg", "data", "channels"),
          ("cfg", "model", "n_classes"), ("cfg", "experiment", "ndim"))


def _at(hp: dict, path: tuple[str, ...]):
    for p in path:
        hp = hp.get(p) if isinstance(hp, dict) else None
    return json.dumps(hp, sort_keys=True, default=str)


def load_ensemble(ckpt_paths) -> tuple[nn.Module, dict]:
    """(:class:`Ensemble` of the checkpoints' models in eval mode, the first checkpoint's
    hyper_parameters); the members must share their preprocessing and classes (the run_ids
    of one experiment do)."""
    paths = [str(p) for p in ckpt_paths]
    loaded = [load_model_from_checkpoint(p) for p in paths]
    hp0 = loaded[0][1]
    for p, (_, hp) in zip(paths[1:], loaded[1:]):
        for path in SHARED:
            if _at(hp, path) != _at(hp0, path):
                raise BioflowError(f"{p}: its {'.'.join(path)} differs from {paths[0]}'s; an ensemble averages "
                                   f"models of one experiment (same data, classes and normalization)")
    return Ensemble([m for m, _ in loaded]).eval(), hp0
