"""Frozen-backbone features of the patch classification workflow (stage ``patch_features``).

The backbone is any registry / timm model name (``model.architecture``, built through
:func:`bioflow.models.build_model` as a 2D classifier whose classification head is dropped),
with its weights from ``model.weights`` (a local state_dict, or the checkpoint of any
bioflow classification run: reuse your own trained model as the feature extractor) or
timm's pretrained weights (``model.pretrained``, needs a download). With neither, a warning
says a randomly initialised backbone is frozen. ``raw_pixels`` is the no-network baseline.

Patches are normalized as ``data.normalization`` says (train-set statistics of
``norm_stats``), or, with a bioflow checkpoint in ``model.weights``, as that model's training
normalized its inputs (its stored config and statistics); resized to ``patches.input_size`` and passed through the frozen backbone in
batches of ``patches.batch_size``, halved on out-of-memory when
``patches.automatic_batch_size``. Written once per run, so a head change reuses them:

``features.h5``: groups ``train`` (the drawn training samples: ``features``, ``labels``,
``h5``, ``origin``), ``val`` and ``test`` (every grid patch: ``features``, ``labels`` (-1:
unlabelled), ``files``, ``image``, ``index``, ``discard``); attributes ``classes``,
``input_size``, ``channels``, ``normalization`` (JSON) and ``architecture``.
``backbone.pt``: the backbone as TorchScript (what the deployment folder ships).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bioflow.data import patch_sampling as ps
from bioflow.data.normalization import load_stats, normalize
from bioflow.errors import BioflowError
from bioflow.io import atomic_path, read_image, read_json
from bioflow.models.registry import build_model
from bioflow.models.serialization import load_tensors

log = logging.getLogger(__name__)


class RawPixels(nn.Module):
    """The baseline: the patch itself, average-pooled to ``side`` x ``side`` and flattened."""

    def __init__(self, side: int = 8):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(side)

    def forward(self, x):
        return torch.flatten(self.pool(x), 1)


class StagePool(nn.Module):
    """Intermediate stages of a timm backbone (``forward_intermediates`` indices), each
    average-pooled over space, concatenated: features that keep more local detail than the
    last stage alone."""

    def __init__(self, backbone: nn.Module, stages):
        super().__init__()
        self.backbone, self.stages = backbone, [int(s) for s in stages]

    def forward(self, x):
        feats = self.backbone.forward_intermediates(x, indices=self.stages, intermediates_only=True)
        return torch.cat([f.mean(dim=(2, 3)) for f in feats], 1)


def build_backbone(model_cfg: dict, channels: int, input_size, stages=None) -> nn.Module:
    """The frozen feature extractor (eval mode, no gradients); with ``stages``
    (``patches.feature_stages``) the pooled outputs of those stages, concatenated."""
    name = model_cfg["architecture"]
    if name == "raw_pixels":
        side = int((model_cfg["kwargs"] or {}).get("side", 8))
        return RawPixels(side).eval()
    cfg = {"experiment": {"workflow": "classification", "ndim": 2},
           "data": {"channels": int(channels), "patch_size": [int(s) for s in input_size]},
           "model": {**model_cfg, "multilabel": False}}
    weights = model_cfg["weights"]
    if weights and Path(weights).is_file():
        hp = (checkpoint_hparams(weights) or {}).get("cfg")
        if hp is not None and hp["model"]["architecture"] != name:
            raise BioflowError(f"model.weights: {weights} is a bioflow checkpoint of a "
                               f"'{hp['model']['architecture']}', not model.architecture '{name}'; "
                               f"set model.architecture: {hp['model']['architecture']}")
    if not weights and not model_cfg["pretrained"]:
        log.warning("patch_features: model.weights is null and model.pretrained false: the frozen backbone "
                    "'%s' keeps its RANDOM initial weights; give a local weights file or a bioflow "
                    "classification checkpoint in model.weights for useful features", name)
    model = build_model(cfg)
    backbone = getattr(model, "backbone", model)
    if stages is not None:
        if not hasattr(backbone, "forward_intermediates"):
            raise BioflowError(f"patches.feature_stages: '{name}' has no stages to take (not a timm model "
                               f"with forward_intermediates); set patches.feature_stages: null")
        backbone = StagePool(backbone, stages)
    for prm in backbone.parameters():
        prm.requires_grad_(False)
    return backbone.eval()


def checkpoint_hparams(path) -> dict | None:
    """The hyper_parameters of a bioflow checkpoint (its training config ``cfg``, its
    ``normalization`` statistics), or None for a plain state_dict."""
    try:
        ck = load_tensors(path, "model.weights")
    except BioflowError:  # reported by the weight loader with its fix
        return None
    hp = ck.get("hyper_parameters") if isinstance(ck, dict) else None
    return hp if isinstance(hp, dict) and isinstance(hp.get("cfg"), dict) else None


def input_normalization(model_cfg: dict, norm_cfg: dict, norm_path) -> tuple[dict, dict | None]:
    """(normalization config, statistics) the backbone's inputs get: those a bioflow
    checkpoint in ``model.weights`` was trained with (its features mean something only on
    inputs scaled as in its training), else ``data.normalization`` with the train-set
    statistics of ``norm_stats``."""
    weights = model_cfg["weights"]
    hp = checkpoint_hparams(weights) if weights and Path(weights).is_file() else None
    if hp is not None and "normalization" in hp:
        ck_cfg = dict(hp["cfg"]["data"]["normalization"])
        log.info("patch_features: inputs normalized as %s was trained (%s), not by data.normalization",
                 weights, ck_cfg["type"])
        return ck_cfg, hp["normalization"]
    stats = load_stats(norm_path) if norm_cfg["type"] != "none" and not norm_cfg["per_image"] else None
    return norm_cfg, stats


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def batched(fn, n: int, batch_size: int, automatic: bool) -> list:
    """``fn(start, stop)`` over ``range(n)`` in batches; with ``automatic`` the batch is
    halved on out-of-memory (down to 1) instead of failing."""
    out, i, bs = [], 0, int(batch_size)
    while i < n:
        try:
            out.append(fn(i, min(n, i + bs)))
        except RuntimeError as exc:
            if not (automatic and bs > 1 and is_oom(exc)):
                raise
            bs //= 2
            log.warning("out of memory: patches.batch_size halved to %d", bs)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        i += bs
    return out


def to_tensor(patches: list[np.ndarray], stats: dict | None, norm_cfg: dict, input_size) -> torch.Tensor:
    """Normalized ``(N, C, H, W)`` float32 batch at ``input_size`` from ``y, x, c`` patches."""
    out = []
    size = tuple(int(s) for s in input_size)
    for p in patches:
        t = torch.from_numpy(normalize(p, stats, norm_cfg)).permute(2, 0, 1)[None]
        if tuple(t.shape[-2:]) != size:
            # as the classification workflow resizes (antialiased when shrinking): a backbone it
            # trained sees the same inputs here
            shrink = any(s < o for s, o in zip(size, t.shape[-2:]))
            t = nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        out.append(t)
    return torch.cat(out)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def extract(backbone, patches: list[np.ndarray], stats, norm_cfg, input_size, batch_size: int,
            automatic: bool) -> np.ndarray:
    """``(N, D)`` float32 features of ``patches``."""
    dev = device()
    backbone = backbone.to(dev)

    def one(a, b):
        return backbone(to_tensor(patches[a:b], stats, norm_cfg, input_size).to(dev)).float().cpu().numpy()

    parts = batched(one, len(patches), batch_size, automatic)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def geometry(info: dict) -> dict:
    """What must match between a deployment and the patches it is given."""
    return {k: info[k] for k in ("patch_size", "patch_number", "overlap", "channels")}


def input_size_of(info: dict, p: dict) -> list[int]:
    if p["input_size"] is not None:
        return [int(s) for s in p["input_size"]]
    return [int(s) for s in info["patch_size"]]


def _train_patches(patches_dir: Path, p: dict, channels: int, seed: int):
    samples, targets = ps.train_samples(patches_dir, p)
    rng = np.random.default_rng(seed)
    images, regions, out, origins = {}, {}, [], []
    for h5 in samples:
        if h5 not in regions:
            regions[h5] = ps.read_region(h5, patches_dir)
        reg = regions[h5]
        key = str(reg.img_path)
        if key not in images:
            images[key] = read_image(reg.img_path, 2, channels)
        patch, origin = ps.draw(reg, images[key], rng)
        out.append(patch)
        origins.append(origin)
    return samples, targets, out, origins


def run(cfg: dict, run_id, info_path, norm_path, features_path, backbone_path) -> dict:
    """Stage patch_features; returns a summary (counts, feature size)."""
    import h5py
    info = read_json(info_path)
    patches_dir = Path(info_path).parent
    p = cfg["patches"]
    channels = int(cfg["data"]["channels"])
    size = input_size_of(info, p)
    norm_cfg, stats = input_normalization(cfg["model"].to_dict(), cfg["data"]["normalization"].to_dict(),
                                          norm_path)
    torch.manual_seed(int(run_id or 0))  # a randomly initialised backbone is the run's own
    backbone = build_backbone(cfg["model"].to_dict(), channels, size, p["feature_stages"])
    classes = list(info["classes"])
    bs, auto = int(p["batch_size"]), bool(p["automatic_batch_size"])

    samples, targets, train_patches, origins = _train_patches(patches_dir, p, channels, int(run_id or 0))
    feats = {"train": extract(backbone, train_patches, stats, norm_cfg, size, bs, auto)}
    grids = {s: ps.grid_patches(patches_dir / s) for s in ("val", "test")}
    for s, items in grids.items():
        imgs = [read_image(g.path, 2, channels) for g in items]
        feats[s] = extract(backbone, imgs, stats, norm_cfg, size, bs, auto)
    dim = int(feats["train"].shape[1])
    norm_json = {"config": norm_cfg, "stats": stats}
    with atomic_path(features_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(classes=json.dumps(classes), input_size=size, channels=channels,
                       normalization=json.dumps(norm_json), architecture=cfg["model"]["architecture"],
                       geometry=json.dumps(geometry(info)))
        g = f.create_group("train")
        g["features"] = feats["train"]
        g["labels"] = np.array([classes.index(t) for t in targets], np.int64)
        g["h5"] = np.array([Path(s).name for s in samples], dtype=h5py.string_dtype())
        g["origin"] = np.array(origins, np.int64).reshape(-1, 2)
        for s, items in grids.items():
            g = f.create_group(s)
            g["features"] = feats[s].reshape(len(items), -1).astype(np.float32) if items else \
                np.zeros((0, dim), np.float32)
            g["labels"] = np.array([classes.index(it.class_name) if it.class_name is not None else -1
                                    for it in items], np.int64)
            g["files"] = np.array([str(it.path.relative_to(patches_dir)) for it in items],
                                  dtype=h5py.string_dtype())
            g["image"] = np.array([it.image for it in items], dtype=h5py.string_dtype())
            g["index"] = np.array([it.index for it in items], np.int64)
            g["discard"] = np.array([it.discard for it in items], bool)
    export_torchscript(backbone, channels, size, backbone_path)
    summary = {"n_train": len(samples), "n_val": len(grids["val"]), "n_test": len(grids["test"]),
               "feature_dim": dim, "input_size": size}
    log.info("patch_features: %s", summary)
    return summary


def export_torchscript(backbone: nn.Module, channels: int, input_size, path) -> Path:
    """The backbone traced to TorchScript on CPU (loadable without bioflow or timm)."""
    backbone = backbone.cpu().eval()
    example = torch.zeros(1, int(channels), *[int(s) for s in input_size])
    with torch.no_grad(), warnings.catch_warnings():
        # deprecated in favour of torch.export, but TorchScript loads with torch alone
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(backbone, example, check_trace=False)
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))
    return Path(path)
