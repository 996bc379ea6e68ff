"""Segmentation models in the shared registry.

* 2D: segmentation-models-pytorch architectures (``unet``, ``unetplusplus``, ``fpn``,
  ``deeplabv3plus``, ...) with any smp encoder (``model.encoder``); ImageNet weights are never
  downloaded: ``pretrained`` needs a local ``model.weights`` file (loaded by the registry).
* 3D (and 2D): ``unet3d``, a U-Net whose spatial rank is a parameter, with plain or residual
  blocks (``model.residual``) and widths ``model.features``.

Every model returns logits ``(N, n_classes, *spatial)`` and carries ``size_divisor``: the
spatial sizes it accepts must be multiples of it (tiles and whole images are padded to it).
"""

from __future__ import annotations

import torch
from torch import nn

from bioflow.errors import BioflowError
from bioflow.models.registry import register_model

# registry name -> smp architecture name
SMP_ARCHS = {
    "unet": "unet", "unetplusplus": "unetplusplus", "fpn": "fpn", "deeplabv3": "deeplabv3",
    "deeplabv3plus": "deeplabv3plus", "manet": "manet", "linknet": "linknet", "pspnet": "pspnet",
    "pan": "pan", "upernet": "upernet",
}
SEG = ("semantic_segmentation",)


def _smp_builder(arch: str):
    def build(cfg: dict, **_) -> nn.Module:
        import segmentation_models_pytorch as smp  # 6 s to import: only the 2D smp models need it
        m = cfg["model"]
        kwargs = dict(m["kwargs"])
        try:
            model = smp.create_model(arch, encoder_name=m["encoder"], encoder_weights=None,
                                     in_channels=int(cfg["data"]["channels"]),
                                     classes=int(m["n_classes"]), **kwargs)
        except KeyError as exc:
            encoders = smp.encoders.get_encoder_names()
            raise BioflowError(f"model.encoder: unknown smp encoder {m['encoder']!r} ({exc}); "
                               f"e.g. {', '.join(encoders[:12])} ...") from None
        except TypeError as exc:
            raise BioflowError(f"model.kwargs: not accepted by smp {arch}: {exc}") from None
        depth = int(kwargs.get("encoder_depth", 5))
        stride = kwargs.get("encoder_output_stride")
        model.size_divisor = 2 ** depth if stride is None else max(int(stride), 2 ** min(depth, 3))
        if arch in ("pspnet",):
            model.size_divisor = 2 ** depth
        if m["pretrained"] and not m["weights"]:
            raise BioflowError("model.pretrained: true needs model.weights (a local state_dict); "
                               "bioflow does not download weights at run time")
        return model

    build.__doc__ = f"smp {arch} (2D) with any smp encoder (model.encoder)"
    return build


for _name, _arch in SMP_ARCHS.items():
    register_model(_name, ndim=(2,), workflows=SEG)(_smp_builder(_arch))


# --- N-D U-Net -----------------------------------------------------------------------------

def _conv(ndim):
    return nn.Conv3d if ndim == 3 else nn.Conv2d


def _norm(ndim):
    # BatchNorm: in eval mode a voxel's output does not depend on the tile it sits in
    return nn.BatchNorm3d if ndim == 3 else nn.BatchNorm2d


class ConvBlock(nn.Module):
    """Two conv-norm-ReLU layers; with ``residual`` a projected skip is added (ResUNet)."""

    def __init__(self, ndim: int, cin: int, cout: int, residual: bool, dropout: float = 0.0):
        super().__init__()
        Conv, Norm = _conv(ndim), _norm(ndim)
        self.body = nn.Sequential(
            Conv(cin, cout, 3, padding=1, bias=False), Norm(cout), nn.ReLU(inplace=True),
            *([nn.Dropout(dropout)] if dropout > 0 else []),
            Conv(cout, cout, 3, padding=1, bias=False), Norm(cout))
        self.skip = None
        if residual:
            self.skip = nn.Identity() if cin == cout else nn.Sequential(Conv(cin, cout, 1, bias=False), Norm(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.body(x)
        if self.skip is not None:
            y = y + self.skip(x)
        return self.act(y)


class UNetND(nn.Module):
    """U-Net for 2D or 3D inputs ``(N, C, *spatial)``; ``features`` are the widths per level."""

    def __init__(self, ndim: int, in_channels: int, n_classes: int, features=(16, 32, 64, 128),
                 residual: bool = False, dropout: float = 0.0):
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError("ndim must be 2 or 3")
        features = [int(f) for f in features]
        Conv = _conv(ndim)
        Pool = nn.MaxPool3d if ndim == 3 else nn.MaxPool2d
        Up = nn.ConvTranspose3d if ndim == 3 else nn.ConvTranspose2d
        self.ndim = ndim
        self.size_divisor = 2 ** (len(features) - 1)
        self.down = nn.ModuleList()
        cin = in_channels
        for f in features:
            self.down.append(ConvBlock(ndim, cin, f, residual, dropout))
            cin = f
        self.pool = Pool(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for f_hi, f_lo in zip(features[::-1][:-1], features[::-1][1:]):
            self.up.append(Up(f_hi, f_lo, 2, stride=2))
            self.dec.append(ConvBlock(ndim, 2 * f_lo, f_lo, residual, dropout))
        self.head = Conv(features[0], n_classes, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def _unet_nd(cfg: dict, **_) -> nn.Module:
    m = cfg["model"]
    return UNetND(int(cfg["experiment"]["ndim"]), int(cfg["data"]["channels"]), int(m["n_classes"]),
                  m["features"], bool(m["residual"]),
                  float(m["dropout"]), **dict(m["kwargs"]))


@register_model("unet3d", ndim=(3,), workflows=SEG)
def build_unet3d(cfg: dict, **_) -> nn.Module:
    """3D U-Net (model.features widths, model.residual for residual blocks)"""
    return _unet_nd(cfg)


@register_model("unet_nd", ndim=(2, 3), workflows=SEG)
def build_unet_nd(cfg: dict, **_) -> nn.Module:
    """Light U-Net in 2D or 3D (the 3D U-Net's code with the rank as a parameter)"""
    return _unet_nd(cfg)


def size_divisor(model: nn.Module) -> int:
    return int(getattr(model, "size_divisor", 1))
