"""The precision / memory-format policy (bioflow.models.precision) and its config keys."""

import numpy as np
import pytest
import torch

from bioflow.config import validate
from bioflow.errors import BioflowError
from bioflow.models import precision


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "32")])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    p = precision.resolve("auto", "cpu")
    assert p.precision == expected and p.device == "cpu"
    assert p.lightning == {"bf16": "bf16-mixed", "32": "32-true"}[expected]


@pytest.mark.parametrize("bf16, expected, scaler", [(True, "bf16", False), (False, "16", True)])
def test_auto_on_gpu(monkeypatch, bf16, expected, scaler):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    p = precision.resolve("auto", "cuda")
    assert (p.precision, p.scaler) == (expected, scaler)


def test_explicit_choices_and_errors(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve("32", "cpu").precision == "32"
    assert precision.resolve("bf16", "cpu").precision == "bf16"
    assert precision.resolve("16", "cpu").precision == "bf16"  # no fast fp16 on a CPU: auto
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert "emulated" in precision.resolve("bf16", "cpu").reason
    with pytest.raises(BioflowError, match="inference.precision"):
        precision.resolve("fp8", "cpu", key="inference.precision")


def test_cpu_flags_decide_native_bf16():
    flags = precision._cpu_flags()
    if flags:
        assert precision.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.mark.parametrize("ndim, channels", [(2, 1), (2, 3), (2, 5), (3, 1), (3, 2)])
def test_channels_last_model_and_input(ndim, channels):
    conv = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
    model = torch.nn.Sequential(conv(channels, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.LazyLinear(2))
    x = torch.randn(2, channels, *([8] * ndim))
    ref = model(x)
    p = precision.Policy("32", "32", "cpu", True, "test")
    p.prepare_model(model)
    fmt = precision.memory_format(ndim)
    assert model[0].weight.is_contiguous(memory_format=fmt)
    xi = p.prepare_input(x)
    assert xi.is_contiguous(memory_format=fmt)
    # the convolution reads it as channels-last, one channel included (its output says so)
    assert model[0](xi).is_contiguous(memory_format=fmt)
    torch.testing.assert_close(model(xi), ref, rtol=1e-4, atol=1e-5)
    assert p.prepare_input(torch.randn(2, 3)).shape == (2, 3)  # non-image input untouched


def test_autocast_runs_bf16_and_agrees_with_fp32():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    p = precision.Policy("bf16", "bf16", "cpu", True, "test")
    p.prepare_model(model)
    with torch.inference_mode(), p.autocast():
        out = model(p.prepare_input(x))
    assert out.dtype == torch.bfloat16
    assert (out.float().argmax(1) == ref.argmax(1)).float().mean() > 0.97


def _cfg(**train_inf):
    return {"experiment": {"name": "x", "workflow": "semantic_segmentation"},
            "data": {"train": "t"}, "model": {"architecture": "unet"}, **train_inf}


@pytest.mark.parametrize("old, new", [("bf16-mixed", "bf16"), ("16-mixed", "16"), ("32-true", "32"), (32, "32"),
                                      ("auto", "auto")])
def test_old_precision_values_migrate(old, new):
    cfg = validate(_cfg(train={"precision": old}, inference={"precision": old}))
    assert cfg["train"]["precision"] == new and cfg["inference"]["precision"] == new


def test_precision_defaults_and_rejects():
    cfg = validate(_cfg())
    assert cfg["train"]["precision"] == "auto" and cfg["inference"]["precision"] == "auto"
    with pytest.raises(BioflowError, match="precision"):
        validate(_cfg(inference={"precision": "fp8"}))


def test_segmentation_predict_fn_policy_matches_fp32():
    from bioflow.inference.segmentation import make_predict_fn
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1)).eval()
    batch = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    ref = make_predict_fn(model)(batch)
    p = precision.Policy("bf16", "bf16", "cpu", True, "test")
    out = make_predict_fn(p.prepare_model(model), policy=p)(batch)
    assert out.shape == ref.shape == (2, 16, 16, 2) and out.dtype == np.float32
    assert np.abs(out - ref).max() < 0.05
    assert (out.argmax(-1) == ref.argmax(-1)).mean() > 0.97
