"""Classification models: 2D timm backbones, N-D (2D/3D) CNNs written in torch, and heads.

Every classifier is ``Classifier(backbone, head)``: the backbone maps ``(N, C, *spatial)`` to
pooled features ``(N, F)``; the head adds optional dense + dropout blocks
(``model.dense_units``, ``model.dropout``), optional metadata fusion (``data.metadata_csv``:
the image features are concatenated with the numeric metadata, then dense + dropout blocks of
``model.metadata_units``, as AUCMEDI does) and the final linear layer with ``model.n_classes``
outputs. Single-label models are trained with softmax / cross-entropy (2 outputs for binary
problems too), multi-label ones with a sigmoid per label (BCE); the head itself returns logits.
"""

from __future__ import annotations

import torch
from torch import nn

from bioflow.errors import BioflowError
from bioflow.models.registry import register_fallback, register_model

# --- N-D building blocks (the spatial rank is a parameter, not a copy) -----------------

def _conv(ndim):
    return {2: nn.Conv2d, 3: nn.Conv3d}[ndim]


def _bn(ndim):
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[ndim]


def _pool(ndim):
    return {2: nn.MaxPool2d, 3: nn.MaxPool3d}[ndim]


def _gap(ndim):
    return {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[ndim](1)


class SimpleCNN(nn.Module):
    """(conv-BN-ReLU) x2 + max-pool per width, then global average pooling; 2D or 3D."""

    def __init__(self, ndim: int, in_chans: int, widths=(16, 32, 64, 128)):
        super().__init__()
        conv, bn, pool = _conv(ndim), _bn(ndim), _pool(ndim)
        layers, c = [], in_chans
        for i, w in enumerate(widths):
            layers += [conv(c, w, 3, padding=1, bias=False), bn(w), nn.ReLU(inplace=True),
                       conv(w, w, 3, padding=1, bias=False), bn(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(pool(2, ceil_mode=True))  # ceil: odd sizes (e.g. 28 -> 7 -> 4) work
            c = w
        self.features = nn.Sequential(*layers, _gap(ndim), nn.Flatten())
        self.num_features = c

    def forward(self, x):
        return self.features(x)


class BasicBlock(nn.Module):
    def __init__(self, ndim, cin, cout, stride):
        super().__init__()
        conv, bn = _conv(ndim), _bn(ndim)
        self.c1, self.b1 = conv(cin, cout, 3, stride, 1, bias=False), bn(cout)
        self.c2, self.b2 = conv(cout, cout, 3, 1, 1, bias=False), bn(cout)
        self.short = (nn.Sequential(conv(cin, cout, 1, stride, bias=False), bn(cout))
                      if stride != 1 or cin != cout else nn.Identity())
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.act(self.b1(self.c1(x)))
        return self.act(self.b2(self.c2(y)) + self.short(x))


class ResNetND(nn.Module):
    """A small ResNet (basic blocks) for 2D or 3D inputs; stem stride 2, then one stage per width."""

    def __init__(self, ndim: int, in_chans: int, blocks=(1, 1, 1, 1), widths=(16, 32, 64, 128)):
        super().__init__()
        if len(blocks) != len(widths):
            raise BioflowError(f"model.features: {len(widths)} widths for a ResNet with "
                               f"{len(blocks)} stages; give {len(blocks)} widths")
        conv, bn = _conv(ndim), _bn(ndim)
        self.stem = nn.Sequential(conv(in_chans, widths[0], 3, 2, 1, bias=False), bn(widths[0]),
                                  nn.ReLU(inplace=True))
        stages, c = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                stages.append(BasicBlock(ndim, c, w, 2 if (j == 0 and i > 0) else 1))
                c = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(_gap(ndim), nn.Flatten())
        self.num_features = c

    def forward(self, x):
        return self.pool(self.stages(self.stem(x)))


# --- head -------------------------------------------------------------------------------

def _dense_blocks(cin: int, units, dropout: float) -> tuple[nn.Module, int]:
    layers = []
    for u in units:
        layers += [nn.Linear(cin, u), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        cin = u
    return nn.Sequential(*layers), cin


class ClassificationHead(nn.Module):
    """features [-> dense+dropout] [-> concat(metadata) -> dense+dropout] -> linear logits."""

    def __init__(self, n_features: int, n_outputs: int, dense_units=(), dropout: float = 0.0,
                 n_metadata: int = 0, metadata_units=(64,)):
        super().__init__()
        self.dense, c = _dense_blocks(n_features, dense_units, dropout)
        self.n_metadata = int(n_metadata)
        if self.n_metadata:
            self.fusion, c = _dense_blocks(c + self.n_metadata, metadata_units, dropout)
        self.drop = nn.Dropout(dropout) if dropout > 0 and not dense_units and not self.n_metadata \
            else nn.Identity()
        self.fc = nn.Linear(c, n_outputs)

    def forward(self, feats, meta=None):
        x = self.dense(feats)
        if self.n_metadata:
            if meta is None:
                raise ValueError("this model fuses metadata: pass meta of shape (N, n_metadata)")
            x = self.fusion(torch.cat([x, meta.to(x.dtype)], dim=1))
        return self.fc(self.drop(x))


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: ClassificationHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x, meta=None):
        return self.head(self.backbone(x), meta)


def make_classifier(cfg: dict, backbone: nn.Module, n_features: int, n_metadata: int = 0) -> Classifier:
    m = cfg["model"]
    head = ClassificationHead(n_features, int(m["n_classes"]), m["dense_units"],
                              float(m["dropout"]), n_metadata, m["metadata_units"])
    return Classifier(backbone, head)


def _in_chans(cfg) -> int:
    return int(cfg["data"]["channels"])


# --- 2D: timm ---------------------------------------------------------------------------

def build_timm_classifier(cfg: dict, name: str, n_metadata: int = 0, **timm_kwargs) -> Classifier:
    """Any timm model as backbone (its own classifier removed: ``num_classes=0``)."""
    import timm  # 6 s to import: only the 2D timm models need it, not the N-D CNNs below
    kwargs = dict(cfg["model"]["kwargs"])
    kwargs.update(timm_kwargs)
    pretrained = bool(cfg["model"]["pretrained"])
    try:
        backbone = timm.create_model(name, pretrained=pretrained, in_chans=_in_chans(cfg),
                                     num_classes=0, **kwargs)
    except TypeError as exc:
        raise BioflowError(f"model.kwargs: not accepted by timm model '{name}' ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - download failures (no internet) and friends
        if pretrained:
            raise BioflowError(f"model.pretrained: could not load pretrained weights for '{name}' "
                               f"({type(exc).__name__}); set pretrained: false or give a local "
                               f"file in model.weights") from None
        raise
    return make_classifier(cfg, backbone, backbone.num_features, n_metadata)


def _timm_builder(name):
    def build(cfg, n_metadata: int = 0, **_):
        return build_timm_classifier(cfg, name, n_metadata)
    build.__doc__ = f"timm {name}"
    return build


def _timm_knows(name: str) -> bool:
    import timm  # 6 s to import: only when a name is not registered (validate_dataset, 2D classification)
    return timm.is_model(name)


register_fallback(_timm_knows, build_timm_classifier, ndim=(2,), workflows=("classification",),
                  hint="or any timm model name, see timm.list_models()")

for _name in ("resnet18", "resnet34", "resnet50", "densenet121", "convnext_nano",
              "mobilenetv3_small_100", *[f"efficientnet_b{i}" for i in range(8)]):
    register_model(_name, ndim=(2,))(_timm_builder(_name))


def vit_patch_size(img_size) -> int:
    """Token size for a small ViT: 16 px for >= 128 px images, 8 px for >= 64, else 4 (28 -> 7x7)."""
    s = min(img_size)
    return 16 if s >= 128 else 8 if s >= 64 else 4


@register_model("vit", ndim=(2,))
def vit(cfg, n_metadata: int = 0, **_):
    """timm ViT sized to data.patch_size (model.kwargs.variant, default vit_tiny_patch16_224)."""
    kwargs = dict(cfg["model"]["kwargs"])
    variant = kwargs.pop("variant", "vit_tiny_patch16_224")
    img = [int(v) for v in cfg["data"]["patch_size"]]
    kwargs.setdefault("patch_size", vit_patch_size(img))
    cfg2 = {**cfg, "model": {**cfg["model"], "kwargs": {}}}
    return build_timm_classifier(cfg2, variant, n_metadata, img_size=tuple(img), **kwargs)


# --- N-D CNNs written here (2D and 3D) ---------------------------------------------------

@register_model("simple_cnn3d", ndim=(3,))
@register_model("simple_cnn", ndim=(2, 3))
def simple_cnn(cfg, n_metadata: int = 0, **_):
    """Plain CNN: (conv-BN-ReLU)x2 + pool per model.features width."""
    ndim = int(cfg["experiment"]["ndim"])
    bb = SimpleCNN(ndim, _in_chans(cfg), cfg["model"]["features"])
    return make_classifier(cfg, bb, bb.num_features, n_metadata)


def _resnet(blocks):
    def build(cfg, n_metadata: int = 0, **_):
        ndim = int(cfg["experiment"]["ndim"])
        widths = list(cfg["model"]["features"])
        nb = tuple(blocks[:len(widths)]) + (blocks[-1],) * max(0, len(widths) - len(blocks))
        bb = ResNetND(ndim, _in_chans(cfg), nb, widths)
        return make_classifier(cfg, bb, bb.num_features, n_metadata)
    return build


register_model("resnet3d_10", ndim=(3,))(_resnet((1, 1, 1, 1)))
register_model("resnet3d", ndim=(3,))(_resnet((1, 1, 1, 1)))  # the 3D template's default
register_model("resnet3d_18", ndim=(3,))(_resnet((2, 2, 2, 2)))
