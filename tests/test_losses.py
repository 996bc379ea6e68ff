"""Losses against hand-computed values, 2D and 3D, with ignore_index and class weights."""

import math

import pytest
import torch
import torch.nn.functional as F

from bioflow.errors import BioflowError
from bioflow.training.losses import LOSSES, build_loss, inverse_frequency, resolve_class_weights, soft_dice_loss

TC = {"loss": "ce", "focal_gamma": 2.0, "loss_weights": [0.5, 0.5], "ignore_index": None}


def _tc(**kw):
    return {**TC, **kw}


def test_ce_hand_computed_with_weights():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([0, 1])
    l0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    l1 = -math.log(math.e / (math.e + 1))
    assert build_loss(_tc(), 2)(logits, target).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    w = build_loss(_tc(), 2, class_weights=[1.0, 3.0])(logits, target).item()
    assert w == pytest.approx((l0 + 3 * l1) / 4, rel=1e-5)


def test_focal_hand_computed_and_gamma0_is_ce():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([0, 1])
    p0 = math.exp(2) / (math.exp(2) + 1)
    p1 = math.e / (math.e + 1)
    expect = (-(1 - p0) ** 2 * math.log(p0) - (1 - p1) ** 2 * math.log(p1)) / 2
    assert build_loss(_tc(loss="focal"), 2)(logits, target).item() == pytest.approx(expect, rel=1e-5)
    ce = build_loss(_tc(), 2, [1.0, 2.0])(logits, target)
    f0 = build_loss(_tc(loss="focal", focal_gamma=0.0), 2, [1.0, 2.0])(logits, target)
    assert f0.item() == pytest.approx(ce.item(), rel=1e-6)


def test_bce_multilabel():
    logits = torch.tensor([[0.0, 2.0]])
    target = torch.tensor([[1.0, 0.0]])
    expect = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert build_loss(_tc(loss="bce"), 2)(logits, target).item() == pytest.approx(expect, rel=1e-5)


def test_dice_perfect_and_hand_computed():
    # confident, correct logits -> dice loss ~ 0
    target = torch.tensor([[[0, 1], [1, 1]]])  # (N=1, 2, 2)
    logits = F.one_hot(target, 2).movedim(-1, 1).float() * 50
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-4)
    # uniform probabilities: class 0 dice = 2*0.5*1/(2+1) = 1/3, class 1: 2*0.5*3/(2+3) = 3/5
    zero = torch.zeros(1, 2, 2, 2)
    assert soft_dice_loss(zero, target).item() == pytest.approx(1 - (1 / 3 + 3 / 5) / 2, rel=1e-4)


def test_dice_3d_and_ignore_index():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6, generator=g)
    target = torch.randint(0, 3, (2, 4, 5, 6), generator=g)
    loss = build_loss(_tc(loss="dice"), 3)(logits, target)
    assert 0 < loss.item() < 1
    # pixels labelled ignore_index count for nothing: changing their logits changes nothing
    target[:, 0] = 255
    f = build_loss(_tc(loss="dice", ignore_index=255), 3)
    a = f(logits, target)
    logits2 = logits.clone()
    logits2[:, :, 0] = torch.randn(2, 3, 5, 6, generator=g) * 10
    assert f(logits2, target).item() == pytest.approx(a.item(), rel=1e-6)
    ce = build_loss(_tc(ignore_index=255), 3)
    assert ce(logits2, target).item() == pytest.approx(ce(logits, target).item(), rel=1e-6)
    foc = build_loss(_tc(loss="focal", ignore_index=255), 3)
    assert foc(logits2, target).item() == pytest.approx(foc(logits, target).item(), rel=1e-6)


def test_ce_dice_is_weighted_sum_2d():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 2, 8, 8, generator=g)
    target = torch.randint(0, 2, (2, 8, 8), generator=g)
    tc = _tc(loss="ce_dice", loss_weights=[0.3, 0.7])
    expect = 0.3 * F.cross_entropy(logits, target) + 0.7 * soft_dice_loss(logits, target)
    assert build_loss(tc, 2)(logits, target).item() == pytest.approx(expect.item(), rel=1e-6)


def test_registry_and_weights():
    assert set(LOSSES) == {"ce", "focal", "bce", "dice", "ce_dice"}
    with pytest.raises(BioflowError, match="train.loss: unknown 'hinge'; valid: bce, ce, ce_dice"):
        build_loss(_tc(loss="hinge"), 2)
    assert inverse_frequency([30, 10]) == pytest.approx([40 / 60, 40 / 20])
    assert resolve_class_weights({"class_weights": "auto"}, [1, 3]) == pytest.approx([2.0, 2 / 3])
    assert resolve_class_weights({"class_weights": None}, [1, 3]) is None
    with pytest.raises(BioflowError, match="train.class_weights"):
        build_loss(_tc(), 3, [1.0, 2.0])
