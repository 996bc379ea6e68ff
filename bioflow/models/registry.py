"""One registry of model builders, looked up by ``model.architecture``.

A builder is registered with :func:`register_model` and called as ``fn(cfg, **extra)`` with
the validated config (``extra`` holds facts that are not config keys, e.g. ``n_metadata``;
builders that need none accept ``**_``). :func:`build_model` checks that the model supports
the configured workflow and ``experiment.ndim``, falls back to a family of names a provider
declared with :func:`register_fallback` (any timm model for 2D classification), and loads
``model.weights`` from a local file.

The registry imports no model module: ``bioflow.models`` (the package) imports the providers
(``classification``, ``segmentation``), which register themselves here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from bioflow.errors import BioflowError
from bioflow.models.serialization import load_tensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    fn: Callable[..., nn.Module]
    ndim: tuple[int, ...]
    workflows: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Fallback:
    accepts: Callable[[str], bool]           # name -> whether this family builds it
    fn: Callable[..., nn.Module]             # fn(cfg, name, **extra)
    ndim: tuple[int, ...]
    workflows: tuple[str, ...]
    hint: str                                # appended to the unknown-name message


_REGISTRY: dict[str, ModelSpec] = {}
_FALLBACKS: list[Fallback] = []


def register_model(name: str, ndim=(2,), workflows=("classification",)):
    """Decorator: register ``fn(cfg, **extra) -> nn.Module`` under ``name``."""
    ndim, workflows = tuple(ndim), tuple(workflows)

    def deco(fn):
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelSpec(name, fn, ndim, workflows, doc[0] if doc else "")
        return fn

    return deco


def register_fallback(accepts: Callable[[str], bool], fn: Callable[..., nn.Module], ndim=(2,),
                      workflows=("classification",), hint: str = "") -> None:
    """Build unregistered names that ``accepts(name)`` with ``fn(cfg, name, **extra)``."""
    _FALLBACKS.append(Fallback(accepts, fn, tuple(ndim), tuple(workflows), hint))


def _fallbacks(workflow: str, ndim: int) -> list[Fallback]:
    return [f for f in _FALLBACKS if workflow in f.workflows and ndim in f.ndim]


def list_models(workflow: str | None = None, ndim: int | None = None) -> list[str]:
    """Registered names (sorted), optionally only those for ``workflow`` / ``ndim``."""
    return sorted(n for n, s in _REGISTRY.items()
                  if (workflow is None or workflow in s.workflows) and (ndim is None or ndim in s.ndim))


def build_model(cfg: dict, **extra) -> nn.Module:
    """The ``nn.Module`` named by ``model.architecture`` for this workflow / ndim.

    Raises BioflowError "model.architecture: unknown 'x'; valid: ..." for an unknown name and
    a similar message when the model does not support the workflow or ``experiment.ndim``.
    """
    spec = check_architecture(cfg)
    return _maybe_load_weights(spec.fn(cfg, **extra), cfg)


def check_architecture(cfg: dict) -> ModelSpec:
    """Check ``model.architecture`` (and a given ``model.weights`` file) without building a model.

    Returns the registered spec (for a fallback family, one made on the fly). Called by
    validate_dataset so that a typo fails before any training time is spent.
    """
    name = cfg["model"]["architecture"]
    wf = cfg["experiment"]["workflow"]
    ndim = int(cfg["experiment"]["ndim"])
    weights = cfg["model"]["weights"]
    if weights and not Path(weights).is_file():
        raise BioflowError(f"model.weights: file not found: {weights}; give a local state_dict "
                           f"(.pt/.pth/.ckpt/.safetensors) or null")
    spec = _REGISTRY.get(name)
    if spec is None:
        families = _fallbacks(wf, ndim)
        for f in families:
            if f.accepts(name):
                return ModelSpec(name, lambda c, _f=f, **extra: _f.fn(c, name, **extra), f.ndim, f.workflows)
        valid = list_models(wf, ndim)
        hint = "".join(f" ({f.hint})" for f in families if f.hint)
        raise BioflowError(f"model.architecture: unknown '{name}'; valid for {wf} {ndim}D: "
                           f"{', '.join(valid)}{hint}")
    if wf not in spec.workflows or ndim not in spec.ndim:
        valid = list_models(wf, ndim)
        raise BioflowError(f"model.architecture: '{name}' supports workflows {list(spec.workflows)} "
                           f"in {list(spec.ndim)}D, not {wf} {ndim}D; valid: {', '.join(valid)}")
    return spec


def _maybe_load_weights(model: nn.Module, cfg: dict) -> nn.Module:
    path = cfg["model"]["weights"]
    if path:
        load_weights(model, path)
    return model


def load_weights(model: nn.Module, path) -> dict:
    """Load a local state_dict (``.pt`` / ``.pth``, a Lightning ``.ckpt`` or ``.safetensors``)
    into ``model`` non-strictly. Read with ``weights_only=True``: a file that needs pickle is
    refused (see :mod:`bioflow.models.serialization`).

    Tensors whose shape differs (typically the classifier head for another class count) are
    dropped; missing / unexpected keys are logged. Returns ``{"missing", "unexpected",
    "dropped"}`` key lists.
    """
    p = Path(path)
    state = load_tensors(p, "model.weights")
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
