"""Model registry: lookup, errors, timm fallback, ViT sizing, 3D CNNs, heads, local weights."""

import logging

import pytest
import torch

from bioflow.errors import BioflowError
from bioflow.models import build_model, list_models, register_model
from bioflow.models.classification import Classifier


def _cfg(arch, ndim=2, channels=1, patch=(32, 32), **model):
    m = {"architecture": arch, "n_classes": 3, "multilabel": False, "pretrained": False, "weights": None,
         "features": [8, 16], "dropout": 0.0, "dense_units": [], "metadata_units": [16], "kwargs": {}}
    m.update(model)
    return {"experiment": {"workflow": "classification", "ndim": ndim},
            "data": {"channels": channels, "patch_size": list(patch)}, "model": m}


def test_unknown_name_lists_valid_names():
    with pytest.raises(BioflowError) as e:
        build_model(_cfg("no_such_net"))
    msg = str(e.value)
    assert msg.startswith("model.architecture: unknown 'no_such_net'; valid")
    assert "efficientnet_b0" in msg and "simple_cnn" in msg and "vit" in msg and "timm" in msg
    with pytest.raises(BioflowError, match="resnet3d_18.*simple_cnn"):
        build_model(_cfg("resnet18", ndim=3, patch=(8, 8, 8)))  # a 2D-only name in 3D


def test_listing_filters():
    two = list_models("classification", 2)
    three = list_models("classification", 3)
    assert {"simple_cnn", "vit", "efficientnet_b0", "efficientnet_b7"} <= set(two)
    assert {"simple_cnn", "resnet3d_10", "resnet3d_18"} <= set(three)
    assert "resnet3d_18" not in two


def test_any_timm_name_in_2d_and_channels():
    m = build_model(_cfg("regnetx_002", channels=3))
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_vit_sized_from_patch_size():
    m = build_model(_cfg("vit", channels=2, patch=(28, 28)))
    assert tuple(m.backbone.patch_embed.img_size) == (28, 28)
    assert m.backbone.patch_embed.proj.in_channels == 2
    assert m(torch.randn(1, 2, 28, 28)).shape == (1, 3)


@pytest.mark.parametrize("arch", ["simple_cnn", "resnet3d_10", "resnet3d_18"])
def test_3d_models_output_shape(arch):
    m = build_model(_cfg(arch, ndim=3, channels=2, patch=(12, 16, 16)))
    assert m(torch.randn(2, 2, 12, 16, 16)).shape == (2, 3)


def test_metadata_fusion_and_dense_head():
    m = build_model(_cfg("simple_cnn", dense_units=[32], dropout=0.3, metadata_units=[16, 8]), n_metadata=5)
    assert isinstance(m, Classifier)
    x, meta = torch.randn(4, 1, 32, 32), torch.randn(4, 5)
    assert m(x, meta).shape == (4, 3)
    assert m.head.fusion[0].in_features == 32 + 5  # concatenated, then dense blocks
    assert any(isinstance(l, torch.nn.Dropout) for l in m.head.fusion)
    m.eval()
    a, b = m(x, meta), m(x, meta + 1)
    assert not torch.allclose(a, b)  # metadata reaches the output
    with pytest.raises(ValueError, match="meta"):
        m(x)


def test_multilabel_head_gives_one_logit_per_label():
    m = build_model(_cfg("simple_cnn", n_classes=5, multilabel=True))
    out = m(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 5)  # independent sigmoids: BCE on these logits


def test_weights_from_local_file_drop_head_mismatch(tmp_path, caplog):
    src = build_model(_cfg("simple_cnn", n_classes=4))
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    with caplog.at_level(logging.WARNING):
        dst = build_model(_cfg("simple_cnn", n_classes=3, weights=str(path)))
    w_src = src.backbone.features[0].weight
    torch.testing.assert_close(dst.backbone.features[0].weight, w_src)
    assert "head.fc.weight" in caplog.text  # dropped: 4 vs 3 classes
    with pytest.raises(BioflowError, match="model.weights: file not found"):
        build_model(_cfg("simple_cnn", weights=str(tmp_path / "missing.pt")))
    bad = tmp_path / "other.pt"
    torch.save({"foo.bar": torch.zeros(1)}, bad)
    with pytest.raises(BioflowError, match="model.weights: no tensor"):
        build_model(_cfg("simple_cnn", weights=str(bad)))


def test_register_model_decorator_is_found():
    @register_model("_test_tiny", ndim=(2, 3), workflows=("classification",))
    def tiny(cfg, **_):
        """A test model."""
        return torch.nn.Linear(1, 1)

    from bioflow.models import registry
    try:
        assert "_test_tiny" in list_models("classification", 3)
        assert isinstance(build_model(_cfg("_test_tiny")), torch.nn.Linear)
    finally:
        registry._REGISTRY.pop("_test_tiny", None)
