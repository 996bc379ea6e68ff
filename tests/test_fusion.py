"""BatchNorm folded into convolutions for prediction: same outputs, no BatchNorm left."""

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from bioflow.config import validate
from bioflow.models import build_model
from bioflow.models.fusion import fold_batchnorm


def _model(workflow, arch, ndim, patch, **model):
    cfg = validate({"experiment": {"name": "x", "workflow": workflow, "ndim": ndim},
                    "data": {"train": "unused", "channels": 2, "patch_size": patch},
                    "model": {"architecture": arch, "n_classes": 3, **model}})
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    for bn in m.modules():  # statistics of a trained model, not the identity of a fresh one
        if isinstance(bn, _BatchNorm):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)
    return m


@pytest.mark.parametrize("workflow, arch, ndim, patch", [
    ("semantic_segmentation", "unet", 2, [64, 64]),
    ("semantic_segmentation", "unet_nd", 3, [16, 32, 32]),
    ("classification", "resnet3d", 3, [16, 16, 16]),
    ("classification", "resnet18", 2, [32, 32]),
])
def test_folded_model_has_no_batchnorm_and_the_same_outputs(workflow, arch, ndim, patch):
    m = _model(workflow, arch, ndim, patch)
    assert any(isinstance(x, _BatchNorm) for x in m.modules())
    x = torch.randn(2, 2, *patch)
    with torch.inference_mode():
        ref = m(x)
        f = fold_batchnorm(m)
        assert not any(isinstance(x, _BatchNorm) for x in f.modules())
        torch.testing.assert_close(f(x), ref, rtol=1e-4, atol=1e-4)


def test_a_model_that_does_not_trace_is_kept_as_is():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)

        def forward(self, x):
            if x.sum() > 0:  # control flow on a tensor value: torch.fx cannot trace it
                x = -x
            return self.bn(self.conv(x))

    m = Branchy()
    assert fold_batchnorm(m) is m and not m.training
