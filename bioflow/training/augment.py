"""Data augmentation as pure functions on ``(C, *spatial)`` arrays, 2D or 3D by rank.

The image and an optional label mask (``(*spatial)``) get the same geometric transform
(flips, 90-degree rotations in the last two axes, affine in the y-x plane: image bilinear,
mask nearest); intensity transforms (brightness / contrast, gaussian noise) touch the image
only. Which transforms run is driven by ``train.augmentation`` keys, each applied with
``probability``; randomness comes only from the ``numpy.random.Generator`` passed in, so a
seeded generator reproduces an augmentation exactly.

Also here: the test-time-augmentation variants for batched torch tensors (:func:`tta_ops`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

DEFAULTS = {"enabled": True, "flips": True, "rot90": True, "affine": False,
            "brightness_contrast": False, "gaussian_noise": False, "probability": 0.5}

# ranges of the random parameters (fractions of the image size / intensity spread)
AFFINE_DEGREES = 15.0
AFFINE_SCALE = (0.9, 1.1)
AFFINE_SHIFT = 0.05
CONTRAST = (0.8, 1.2)
BRIGHTNESS = 0.1
NOISE_STD = 0.1


def _cfg(aug_cfg: dict | None) -> dict:
    out = dict(DEFAULTS)
    out.update(aug_cfg or {})
    return out


def flip(image, mask, axis: int):
    """Flip spatial ``axis`` (0-based over the spatial axes) of image and mask."""
    image = np.flip(image, axis=axis + 1)
    mask = None if mask is None else np.flip(mask, axis=axis)
    return image, mask


def rot90(image, mask, k: int):
    """Rotate by k * 90 degrees in the last two (y, x) axes."""
    image = np.rot90(image, k, axes=(-2, -1))
    mask = None if mask is None else np.rot90(mask, k, axes=(-2, -1))
    return image, mask


def affine_matrix(ndim: int, shape, angle_deg: float, scale: float, shift_yx) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) for scipy's affine_transform: rotate / scale about the centre of the
    y-x plane and shift by ``shift_yx`` pixels; z (3D) is left alone."""
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) / scale
    m = np.eye(ndim)
    m[-2:, -2:] = rot  # output -> input coordinates
    centre = (np.asarray(shape, dtype=float) - 1) / 2
    shift = np.zeros(ndim)
    shift[-2:] = shift_yx
    offset = centre - m @ (centre + shift)
    return m, offset


def affine(image, mask, angle_deg: float, scale: float, shift_yx):
    spatial = image.shape[1:]
    m, off = affine_matrix(len(spatial), spatial, angle_deg, scale, shift_yx)
    out = np.stack([ndimage.affine_transform(c.astype(np.float32, copy=False), m, off, order=1,
                                             mode="reflect") for c in image])
    if mask is not None:
        mask = ndimage.affine_transform(mask, m, off, order=0, mode="reflect")
    return out, mask


def brightness_contrast(image, contrast: float, brightness: float):
    """x -> (x - mean) * contrast + mean + brightness * std, per channel."""
    axes = tuple(range(1, image.ndim))
    mean = image.mean(axis=axes, keepdims=True)
    std = image.std(axis=axes, keepdims=True)
    return ((image - mean) * contrast + mean + brightness * std).astype(np.float32)


def gaussian_noise(image, sigma_frac: float, rng: np.random.Generator):
    std = float(image.std()) or 1.0
    return (image + rng.normal(0.0, sigma_frac * std, image.shape)).astype(np.float32)


def augment(image: np.ndarray, mask: np.ndarray | None = None, aug_cfg: dict | None = None,
            rng: np.random.Generator | None = None):
    """Randomly augment ``image`` ``(C, *spatial)`` and ``mask`` ``(*spatial)`` jointly.

    Returns ``(image float32, mask or None)`` as contiguous arrays.
    """
    cfg = _cfg(aug_cfg)
    rng = rng if rng is not None else np.random.default_rng()
    image = np.asarray(image, dtype=np.float32)
    if not cfg["enabled"]:
        return image, mask
    p = float(cfg["probability"])
    ndim = image.ndim - 1
    if mask is not None and tuple(mask.shape) != tuple(image.shape[1:]):
        raise ValueError(f"mask shape {mask.shape} does not match image spatial shape {image.shape[1:]}")
    if cfg["flips"]:
        for ax in range(ndim):
            if rng.random() < p:
                image, mask = flip(image, mask, ax)
    if cfg["rot90"] and rng.random() < p:
        square = image.shape[-1] == image.shape[-2]
        k = int(rng.integers(1, 4)) if square else 2  # non-square: only 180 keeps the shape
        image, mask = rot90(image, mask, k)
    if cfg["affine"] and rng.random() < p:
        angle = rng.uniform(-AFFINE_DEGREES, AFFINE_DEGREES)
        scale = rng.uniform(*AFFINE_SCALE)
        shift = rng.uniform(-AFFINE_SHIFT, AFFINE_SHIFT, 2) * np.asarray(image.shape[-2:])
        image, mask = affine(image, mask, angle, scale, shift)
    if cfg["brightness_contrast"] and rng.random() < p:
        image = brightness_contrast(image, rng.uniform(*CONTRAST), rng.uniform(-BRIGHTNESS, BRIGHTNESS))
    if cfg["gaussian_noise"] and rng.random() < p:
        image = gaussian_noise(image, rng.uniform(0, NOISE_STD), rng)
    image = np.ascontiguousarray(image, dtype=np.float32)
    mask = None if mask is None else np.ascontiguousarray(mask)
    return image, mask


# --- test-time augmentation on batched torch tensors (N, C, *spatial) --------------------

def tta_ops(spatial_shape, flips: bool = True, rot90: bool = True) -> list[tuple]:
    """``[(forward, inverse), ...]``: identity, flips of each spatial axis and (square y-x)
    rotations by 90/180/270 degrees; ``inverse`` maps a prediction back (segmentation).

    Pass the training ``augmentation`` flags: a model never trained on rotated images should
    not be asked about them (``tta_flags``)."""
    import torch

    nd = len(spatial_shape)
    ops = [(lambda t: t, lambda t: t)]
    for ax in range(nd if flips else 0):
        d = 2 + ax
        ops.append((lambda t, d=d: torch.flip(t, (d,)), lambda t, d=d: torch.flip(t, (d,))))
    if rot90 and spatial_shape[-1] == spatial_shape[-2]:
        for k in (1, 2, 3):
            ops.append((lambda t, k=k: torch.rot90(t, k, (-2, -1)),
                        lambda t, k=k: torch.rot90(t, -k, (-2, -1))))
    return ops


def tta_flags(aug_cfg: dict | None) -> dict:
    """``{"flips", "rot90"}`` for :func:`tta_ops` from a training ``train.augmentation``."""
    cfg = _cfg(aug_cfg)
    on = bool(cfg["enabled"])
    return {"flips": on and bool(cfg["flips"]), "rot90": on and bool(cfg["rot90"])}
