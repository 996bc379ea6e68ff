"""Data augmentation as pure functions on ``(C, *spatial)`` arrays, 2D or 3D by rank.

The image and an optional label mask (``(*spatial)``) get the same geometric transform
(flips, 90-degree rotations in the last two axes, affine in the y-x plane: image bilinear,
mask nearest); intensity transforms (brightness / contrast, gaussian noise) touch the image
only. Which transforms run is driven by ``train.augmentation`` keys, each applied with
``probability``; randomness comes only from the ``numpy.random.Generator`` passed in, so a
seeded generator reproduces an augmentation exactly.

Also here: the one test-time augmentation of every workflow (:func:`predict_tta`) on batched
torch tensors, restricted to the transforms the model was trained with (:func:`tta_flags`).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

# ranges of the random parameters (fractions of the image size / intensity spread)
AFFINE_DEGREES = 15.0
AFFINE_SCALE = (0.9, 1.1)
AFFINE_SHIFT = 0.05
CONTRAST = (0.8, 1.2)
BRIGHTNESS = 0.1
NOISE_STD = 0.1
# names of the spatial axes in memory order, (z,)y,x (train.augmentation.flips)
AXIS_NAMES = ("z", "y", "x")


def flip_axes(flips, ndim: int) -> tuple[int, ...]:
    """The spatial axes (0-based over ``(z,)y,x``) that ``train.augmentation.flips`` mirrors:
    ``True`` every axis, ``False`` / ``[]`` none, a list of names (``["x"]``) those axes."""
    if isinstance(flips, bool):
        return tuple(range(ndim)) if flips else ()
    names = AXIS_NAMES[-ndim:]
    return tuple(i for i, n in enumerate(names) if n in flips)


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
    if len(spatial) == 3:
        # z is left alone (identity row, zero offset): the same 2D transform of every z slice
        # gives the same values as the 3D one at half its interpolation work (4 neighbours, not 8)
        m, off = m[1:, 1:], off[1:]

    def warp(a, order):
        if a.ndim == m.shape[0]:
            return ndimage.affine_transform(a, m, off, order=order, mode="reflect")
        return np.stack([ndimage.affine_transform(s, m, off, order=order, mode="reflect") for s in a])
    out = np.stack([warp(c.astype(np.float32, copy=False), 1) for c in image])
    if mask is not None:
        mask = warp(mask, 0)
    return out, mask


def brightness_contrast(image, contrast: float, brightness: float):
    """x -> (x - mean) * contrast + mean + brightness * std, per channel."""
    axes = tuple(range(1, image.ndim))
    mean = image.mean(axis=axes, keepdims=True)
    std = image.std(axis=axes, keepdims=True)
    return ((image - mean) * contrast + mean + brightness * std).astype(np.float32)


def gaussian_noise(image, sigma_frac: float, rng: np.random.Generator):
    std = float(image.std()) or 1.0
    noise = rng.standard_normal(image.shape, dtype=np.float32)  # float32: no float64 image-sized temporaries
    noise *= np.float32(sigma_frac * std)
    noise += image
    return noise


def augment(image: np.ndarray, mask: np.ndarray | None, cfg: dict,
            rng: np.random.Generator | None = None):
    """Randomly augment ``image`` ``(C, *spatial)`` and ``mask`` ``(*spatial)`` jointly as the
    validated ``train.augmentation`` section ``cfg`` says.

    Returns ``(image float32, mask or None)`` as contiguous arrays.
    """
    rng = rng if rng is not None else np.random.default_rng()
    image = np.asarray(image, dtype=np.float32)
    if not cfg["enabled"]:
        return image, mask
    p = float(cfg["probability"])
    ndim = image.ndim - 1
    if mask is not None and tuple(mask.shape) != tuple(image.shape[1:]):
        raise ValueError(f"mask shape {mask.shape} does not match image spatial shape {image.shape[1:]}")
    for ax in flip_axes(cfg["flips"], ndim):
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

def tta_transforms(spatial_shape, flips=True, rot90: bool = True) -> list[tuple[tuple[int, ...], int]]:
    """``[(flip axes, k), ...]``: the distinct symmetries generated by the training augmentations.

    Flips of any subset of the flipped axes (``flips`` as in ``train.augmentation.flips``: a
    bool or axis names, see :func:`flip_axes`) combined with ``k`` quarter turns in the
    y-x plane (``rot90``; square y-x only, else only the half turn, as :func:`augment` does).
    Each entry flips first, then rotates; duplicates (a flip of y and x equals a half turn) are
    dropped, so 2D with both gives the 8 symmetries of the square. The identity comes first.
    """
    nd = len(spatial_shape)
    square = spatial_shape[-1] == spatial_shape[-2]
    axes = flip_axes(flips, nd)
    flip_sets = [f for r in range(len(axes) + 1) for f in itertools.combinations(axes, r)]
    turns = ((0, 1, 2, 3) if square else (0, 2)) if rot90 else (0,)
    # a small probe with the same squareness tells which combinations coincide
    shape = (2,) * (nd - 2) + ((3, 3) if square else (3, 6))
    probe = np.arange(int(np.prod(shape))).reshape(shape)
    seen, out = set(), []
    for k in turns:
        for f in flip_sets:
            moved = np.rot90(np.flip(probe, f) if f else probe, k, axes=(-2, -1))
            key = (moved.shape, moved.tobytes())
            if key not in seen:
                seen.add(key)
                out.append((f, k))
    return out


def tta_ops(spatial_shape, flips=True, rot90: bool = True) -> list[tuple[Callable, Callable]]:
    """``[(forward, inverse), ...]`` on ``(N, C, *spatial)`` tensors for :func:`tta_transforms`;
    ``inverse`` maps a dense prediction back (segmentation). Identity first."""
    ops = []
    for f, k in tta_transforms(spatial_shape, flips, rot90):
        dims = tuple(2 + a for a in f)

        def forward(t, dims=dims, k=k):
            t = torch.flip(t, dims) if dims else t
            return torch.rot90(t, k, (-2, -1)) if k else t

        def inverse(t, dims=dims, k=k):
            t = torch.rot90(t, -k, (-2, -1)) if k else t
            return torch.flip(t, dims) if dims else t

        ops.append((forward, inverse))
    return ops


def tta_flags(aug_cfg: dict) -> dict:
    """``{"flips", "rot90"}`` for :func:`tta_ops` from a training ``train.augmentation``: a model
    never trained on rotated or upside-down images (e.g. chest X-rays, ``flips: [x]``) is not
    asked about them. ``flips``: False or the training value (True or axis names)."""
    on = bool(aug_cfg["enabled"])
    flips = aug_cfg["flips"]
    return {"flips": (list(flips) if isinstance(flips, list) else bool(flips)) if on else False,
            "rot90": on and bool(aug_cfg["rot90"])}


def predict_tta(fn: Callable, x: torch.Tensor, flags: dict | None, dense: bool) -> torch.Tensor:
    """Mean of ``fn`` (a batch ``(N, C, *spatial)`` -> probabilities) over the TTA transforms.

    ``flags`` None: no TTA, ``fn(x)``. ``dense``: the output is ``(N, K, *spatial)`` and each
    transformed prediction is mapped back before averaging (segmentation); else ``(N, K)``.
    The one TTA used by every workflow's inference.
    """
    if flags is None:
        return fn(x)
    ops = tta_ops(tuple(x.shape[2:]), **flags)
    total = 0
    for forward, inverse in ops:
        y = fn(forward(x))
        total = total + (inverse(y) if dense else y)
    return total / len(ops)
