"""One registry of model builders, looked up by ``model.architecture``.

A builder is registered with :func:`register_model` and called as ``fn(cfg, **extra)`` with
the validated config (``extra`` holds facts that are not config keys, e.g. ``n_metadata``;
builders that need none accept ``**_``). :func:`build_model` checks that the model supports
the configured workflow and ``experiment.ndim``, falls back to any timm model name for 2D
classification, and loads ``model.weights`` from a local file.

The modules that register models are imported lazily (on first lookup) so importing the
registry stays cheap and the segmentation module may be added later.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bioflow.errors import BioflowError

log = logging.getLogger(__name__)

# modules whose import registers models; a missing one (not written yet) is tolerated
_PROVIDERS = ("bioflow.models.classification", "bioflow.models.segmentation")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    fn: Callable[..., nn.Module]
    ndim: tuple[int, ...]
    workflows: tuple[str, ...]
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}
_loaded = False


def register_model(name: str, ndim=(2,), workflows=("classification",)):
    """Decorator: register ``fn(cfg, **extra) -> nn.Module`` under ``name``."""
    ndim, workflows = tuple(ndim), tuple(workflows)

    def deco(fn):
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelSpec(name, fn, ndim, workflows, doc[0] if doc else "")
        return fn

    return deco


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _PROVIDERS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:  # a real missing dependency inside the module: surface it
                raise
    _loaded = True


def list_models(workflow: str | None = None, ndim: int | None = None) -> list[str]:
    """Registered names (sorted), optionally only those for ``workflow`` / ``ndim``."""
    _ensure_loaded()
    return sorted(n for n, s in _REGISTRY.items()
                  if (workflow is None or workflow in s.workflows) and (ndim is None or ndim in s.ndim))


def get_spec(name: str) -> ModelSpec | None:
    _ensure_loaded()
    return _REGISTRY.get(name)


def _timm_ok(name: str) -> bool:
    import timm
    return timm.is_model(name)


def build_model(cfg: dict, **extra) -> nn.Module:
    """The ``nn.Module`` named by ``model.architecture`` for this workflow / ndim.

    Raises BioflowError "model.architecture: unknown 'x'; valid: ..." for an unknown name and
    a similar message when the model does not support the workflow or ``experiment.ndim``.
    """
    spec = check_architecture(cfg)
    if spec is None:
        from bioflow.models.classification import build_timm_classifier
        model = build_timm_classifier(cfg, cfg["model"]["architecture"], **extra)
        return _maybe_load_weights(model, cfg)
    model = spec.fn(cfg, **extra)
    return _maybe_load_weights(model, cfg)


def check_architecture(cfg: dict) -> ModelSpec | None:
    """Check ``model.architecture`` (and a given ``model.weights`` file) without building a model.

    Returns the registered spec, or None for a plain timm name (2D classification). Called by
    validate_dataset so that a typo fails before any training time is spent.
    """
    _ensure_loaded()
    name = cfg["model"]["architecture"]
    wf = cfg["experiment"]["workflow"]
    ndim = int(cfg["experiment"].get("ndim", 2))
    weights = cfg["model"].get("weights")
    if weights and not Path(weights).is_file():
        raise BioflowError(f"model.weights: file not found: {weights}; give a local state_dict (.pt/.pth/.ckpt) or null")
    spec = _REGISTRY.get(name)
    if spec is None:
        if wf == "classification" and ndim == 2 and _timm_ok(name):
            return None
        valid = list_models(wf, ndim)
        hint = " (or any timm model name, see timm.list_models())" if wf == "classification" and ndim == 2 else ""
        raise BioflowError(f"model.architecture: unknown '{name}'; valid for {wf} {ndim}D: "
                           f"{', '.join(valid)}{hint}")
    if wf not in spec.workflows or ndim not in spec.ndim:
        valid = list_models(wf, ndim)
        raise BioflowError(f"model.architecture: '{name}' supports workflows {list(spec.workflows)} "
                           f"in {list(spec.ndim)}D, not {wf} {ndim}D; valid: {', '.join(valid)}")
    return spec


def _maybe_load_weights(model: nn.Module, cfg: dict) -> nn.Module:
    path = cfg["model"].get("weights")
    if path:
        load_weights(model, path)
    return model


def load_weights(model: nn.Module, path) -> dict:
    """Load a local state_dict (or Lightning checkpoint) into ``model`` non-strictly.

    Tensors whose shape differs (typically the classifier head for another class count) are
    dropped; missing / unexpected keys are logged. Returns ``{"missing", "unexpected",
    "dropped"}`` key lists.
    """
    p = Path(path)
    if not p.is_file():
        raise BioflowError(f"model.weights: file not found: {p}; give a local state_dict (.pt/.pth/.ckpt)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling error means a bad file
        raise BioflowError(f"model.weights: {p} is not a torch state_dict ({type(exc).__name__}); "
                           f"save one with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a Lightning checkpoint: keys are "model.<...>"
    if not isinstance(state, dict):
        raise BioflowError(f"model.weights: {p} holds a {type(state).__name__}, not a state_dict")
    own = model.state_dict()
    if not any(k in own for k in state):
        for prefix in ("model.", "module."):
            stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if any(k in own for k in stripped):
                state = stripped
                break
    dropped = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    state = {k: v for k, v in state.items() if k not in dropped}
    res = model.load_state_dict(state, strict=False)
    if not any(k in own for k in state):
        raise BioflowError(f"model.weights: no tensor of {p} matches model.architecture; "
                           f"were these weights saved from another architecture?")
    if dropped:
        log.warning("model.weights: dropped %d tensors with a different shape: %s", len(dropped), dropped)
    if res.missing_keys:
        log.warning("model.weights: %d missing keys (left as initialised): %s",
                    len(res.missing_keys), res.missing_keys)
    if res.unexpected_keys:
        log.warning("model.weights: %d unexpected keys ignored: %s", len(res.unexpected_keys),
                    res.unexpected_keys)
    return {"missing": list(res.missing_keys), "unexpected": list(res.unexpected_keys), "dropped": dropped}
