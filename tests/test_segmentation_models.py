"""Segmentation models in the shared registry: shapes, divisors, errors."""

import pytest
import torch

from bioflow.errors import BioflowError
from bioflow.models import build_model, list_models


def _cfg(arch, ndim=2, **model):
    m = {"architecture": arch, "n_classes": 3, "encoder": "resnet18", "features": [4, 8, 16],
         "residual": False, "dropout": 0.0, "kwargs": {}, "weights": None, "pretrained": False}
    m.update(model)
    return {"experiment": {"workflow": "semantic_segmentation", "ndim": ndim}, "data": {"channels": 2}, "model": m}


def test_registered_names():
    names2 = list_models("semantic_segmentation", 2)
    for n in ("unet", "unetplusplus", "fpn", "deeplabv3plus", "manet", "linknet", "pspnet", "unet_nd"):
        assert n in names2
    assert "unet3d" in list_models("semantic_segmentation", 3)
    assert "unet" not in list_models("semantic_segmentation", 3)


@pytest.mark.parametrize("arch", ["unet", "fpn", "deeplabv3plus", "linknet"])
def test_smp_forward(arch):
    model = build_model(_cfg(arch)).eval()
    assert model.size_divisor == 32
    with torch.no_grad():
        y = model(torch.randn(1, 2, 64, 64))
    assert y.shape == (1, 3, 64, 64)


@pytest.mark.parametrize("residual", [False, True])
def test_unet3d_forward(residual):
    model = build_model(_cfg("unet3d", ndim=3, residual=residual)).eval()
    assert model.size_divisor == 4
    with torch.no_grad():
        y = model(torch.randn(2, 2, 8, 16, 12))
    assert y.shape == (2, 3, 8, 16, 12)
    if residual:
        assert any("skip" in n for n, _ in model.named_modules())


def test_unet_nd_2d():
    y = build_model(_cfg("unet_nd")).eval()(torch.randn(1, 2, 16, 16))
    assert y.shape == (1, 3, 16, 16)


def test_errors_name_the_key():
    with pytest.raises(BioflowError, match="model.encoder"):
        build_model(_cfg("unet", encoder="no_such_encoder"))
    with pytest.raises(BioflowError, match="model.architecture"):
        build_model(_cfg("unet", ndim=3))
    with pytest.raises(BioflowError, match="model.pretrained"):
        build_model(_cfg("unet", pretrained=True))
