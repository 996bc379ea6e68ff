"""Models: one registry (``build_model(cfg)``) for 2D timm / 3D CNN classifiers and segmenters.

Importing the package imports the provider modules, which register their models.
"""

from bioflow.models import classification, segmentation  # noqa: F401 - registers the models
from bioflow.models.registry import build_model, list_models, load_weights, register_model

__all__ = ["build_model", "list_models", "load_weights", "register_model"]
