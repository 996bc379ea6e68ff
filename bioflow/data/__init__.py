"""Data discovery, validation (manifest), normalization, datasets and augmentation (with TTA)."""
