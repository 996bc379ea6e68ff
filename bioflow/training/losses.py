"""Losses, one registry (``LOSSES``) looked up by ``train.loss``.

All take ``(logits, target)``:

* single-label classification: logits ``(N, C)``, target ``(N,)`` class ids;
* segmentation: logits ``(N, C, *spatial)`` (2D or 3D), target ``(N, *spatial)`` class ids;
* multi-label (``bce``): logits ``(N, L)``, target ``(N, L)`` in {0, 1}.

``ignore_index`` (``train.ignore_index``) marks target pixels that count for nothing, in CE,
focal and Dice alike.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bioflow.errors import BioflowError

_NO_IGNORE = -100  # torch's default ignore_index; never a class id here


def _weights(class_weights, n_classes):
    if class_weights is None:
        return None
    w = torch.as_tensor(class_weights, dtype=torch.float32).reshape(-1)
    if w.numel() != n_classes:
        raise BioflowError(f"train.class_weights: {w.numel()} weights for {n_classes} classes")
    return w


class CrossEntropy(nn.Module):
    def __init__(self, weight=None, ignore_index=None):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.ignore_index = _NO_IGNORE if ignore_index is None else int(ignore_index)

    def forward(self, logits, target):
        return F.cross_entropy(logits.float(), target.long(), weight=self.weight,
                               ignore_index=self.ignore_index)


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017): mean over samples of -a_t (1-p_t)^g log p_t.

    ``weight`` plays the role of the per-class alpha; the mean is weighted like torch's CE
    (divided by the sum of the weights of the counted samples) so gamma=0 equals weighted CE.
    """

    def __init__(self, gamma=2.0, weight=None, ignore_index=None):
        super().__init__()
        self.gamma = float(gamma)
        self.register_buffer("weight", weight, persistent=False)
        self.ignore_index = ignore_index

    def forward(self, logits, target):
        logits, target = logits.float(), target.long()
        logp = F.log_softmax(logits, dim=1)
        valid = torch.ones_like(target, dtype=torch.bool) if self.ignore_index is None \
            else target != self.ignore_index
        t = torch.where(valid, target, torch.zeros_like(target))
        logp_t = logp.gather(1, t.unsqueeze(1)).squeeze(1)
        loss = -((1 - logp_t.exp()) ** self.gamma) * logp_t
        w = self.weight[t] if self.weight is not None else torch.ones_like(loss)
        w = w * valid
        return (loss * w).sum() / w.sum().clamp_min(1e-12)


class BCE(nn.Module):
    """Multi-label: one sigmoid per label; ``weight`` = per-label positive weight."""

    def __init__(self, pos_weight=None):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits, target):
        return F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=self.pos_weight)


def soft_dice_loss(logits, target, ignore_index=None, smooth: float = 1e-5):
    """1 - mean over classes of the soft Dice of softmax(logits) vs one-hot(target).

    Sums run over the batch and all spatial axes (batch Dice), so a class absent from one
    image does not dominate; N-D: logits ``(N, C, *spatial)``, target ``(N, *spatial)``.
    """
    logits, target = logits.float(), target.long()
    n_classes = logits.shape[1]
    probs = logits.softmax(dim=1)
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(t, n_classes).movedim(-1, 1).to(probs.dtype)
    v = valid.unsqueeze(1).to(probs.dtype)
    probs, onehot = probs * v, onehot * v
    dims = (0,) + tuple(range(2, logits.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    return 1 - dice.mean()


class DiceLoss(nn.Module):
    def __init__(self, ignore_index=None):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits, target):
        return soft_dice_loss(logits, target, self.ignore_index)


class CEDice(nn.Module):
    def __init__(self, weights=(0.5, 0.5), class_weight=None, ignore_index=None):
        super().__init__()
        self.w_ce, self.w_dice = (float(w) for w in weights)
        self.ce = CrossEntropy(class_weight, ignore_index)
        self.dice = DiceLoss(ignore_index)

    def forward(self, logits, target):
        return self.w_ce * self.ce(logits, target) + self.w_dice * self.dice(logits, target)


def _ce(tc, n, w):
    return CrossEntropy(w, tc["ignore_index"])


def _focal(tc, n, w):
    return FocalLoss(tc["focal_gamma"], w, tc["ignore_index"])


def _bce(tc, n, w):
    return BCE(w)


def _dice(tc, n, w):
    return DiceLoss(tc["ignore_index"])


def _ce_dice(tc, n, w):
    return CEDice(tc["loss_weights"], w, tc["ignore_index"])


LOSSES: dict[str, Callable[[dict, int, torch.Tensor | None], nn.Module]] = {
    "ce": _ce, "focal": _focal, "bce": _bce, "dice": _dice, "ce_dice": _ce_dice,
}


def build_loss(train_cfg: dict, n_classes: int, class_weights=None) -> nn.Module:
    """The loss named by ``train.loss``. ``class_weights``: resolved per-class weights (the
    caller turns ``train.class_weights: auto`` into numbers; see :func:`inverse_frequency`);
    for ``bce`` they are per-label positive weights."""
    name = train_cfg["loss"]
    if name not in LOSSES:
        raise BioflowError(f"train.loss: unknown '{name}'; valid: {', '.join(sorted(LOSSES))}")
    return LOSSES[name](train_cfg, int(n_classes), _weights(class_weights, int(n_classes)))


def inverse_frequency(counts) -> list[float]:
    """Class weights N / (C * n_c) (sklearn's 'balanced'); an absent class gets weight 0."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    total, c = counts.sum(), counts.numel()
    w = torch.where(counts > 0, total / (c * counts.clamp_min(1)), torch.zeros_like(counts))
    return [float(v) for v in w]


def resolve_class_weights(train_cfg: dict, counts) -> list[float] | None:
    """``train.class_weights``: null -> None, 'auto' -> inverse frequency, list -> as given."""
    cw = train_cfg["class_weights"]
    if cw is None:
        return None
    if cw == "auto":
        return inverse_frequency(counts)
    return [float(v) for v in cw]
