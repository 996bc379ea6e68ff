"""Models: one registry (``build_model(cfg)``) for 2D timm / 3D CNN classifiers and segmenters."""

from bioflow.models.registry import build_model, list_models, load_weights, register_model

__all__ = ["build_model", "list_models", "load_weights", "register_model"]
