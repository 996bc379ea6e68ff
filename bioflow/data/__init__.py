"""Data discovery, validation (manifest), normalization and datasets."""
