"""Sliding-window (tiled) inference as pure functions, 2D and 3D alike.

Modelled on nnU-Net v2's sliding-window helpers (``compute_steps_for_sliding_window``,
``compute_gaussian``), extended with BiaPy's *padding*: each tile carries ``padding`` pixels of
context on every side that are predicted but discarded, so only the tile's *core*
(``tile - 2 * padding``) is blended into the output.

Geometry (per spatial axis, image size ``n``, tile ``t``, padding ``p``, core ``c = t - 2p``):

- the image is extended to ``e = max(n, c)`` and then reflect-padded by ``p`` on both sides;
- core starts ``s`` come from :func:`bioflow.geometry.compute_steps` over ``e`` with window ``c``: the cores cover
  ``[0, e)`` exactly, the first at 0 and the last ending at ``e``;
- the tile for core start ``s`` reads padded rows ``[s, s + t)`` and writes its core
  ``[p, p + c)`` to output rows ``[s, s + c)``.

The driver :func:`predict_tiled` walks the tile rows along the first spatial axis in order and
hands finished output rows to a ``write`` callback as soon as no later tile can touch them, so the
same code serves in-memory arrays and chunk-by-chunk streaming (see ``bioflow.inference.streaming``).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from bioflow.errors import BioflowError
from bioflow.geometry import compute_steps, pad_indices


# --- blending weights ------------------------------------------------------------------

def gaussian_weights(shape: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """nnU-Net's importance map: a separable gaussian centred on the window, max 1, all > 0.

    ``sigma = sigma_scale * size`` per axis. Zeros (underflow far from the centre) are replaced
    by the smallest positive value so every pixel keeps a positive weight.
    """
    w = np.ones((), dtype=np.float64)
    for n in shape:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        sigma = max(sigma_scale * n, 1e-6)
        w = np.multiply.outer(w, np.exp(-0.5 * (x / sigma) ** 2))
    w = w / w.max()
    positive = w[w > 0]
    w[w <= 0] = positive.min() if positive.size else 1.0
    return w.astype(np.float32)


def blending_weights(shape: Sequence[int], mode: str = "gaussian") -> np.ndarray:
    """Weights of one tile core for blending: ``gaussian`` (nnU-Net) or ``constant`` (mean)."""
    if mode == "gaussian":
        return gaussian_weights(shape)
    if mode == "constant":
        return np.ones(tuple(shape), dtype=np.float32)
    raise BioflowError(f"inference.blending: '{mode}' is not supported; use gaussian or constant")


# --- the tile plan -------------------------------------------------------------------------

@dataclass(frozen=True)
class TilePlan:
    image_shape: tuple[int, ...]   # spatial shape of the image
    tile: tuple[int, ...]          # tile (network input) shape
    padding: tuple[int, ...]       # context discarded on each side of a tile
    core: tuple[int, ...]          # tile - 2 * padding
    extent: tuple[int, ...]        # max(image, core): the grid the cores cover
    steps: tuple[tuple[int, ...], ...]   # core starts per axis

    @property
    def ndim(self) -> int:
        return len(self.image_shape)

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(e + 2 * p for e, p in zip(self.extent, self.padding))

    @property
    def pad_width(self) -> list[tuple[int, int]]:
        """np.pad widths that turn the image into the padded grid the tiles read."""
        return [(p, p + e - n) for n, e, p in zip(self.image_shape, self.extent, self.padding)]

    def starts(self) -> list[tuple[int, ...]]:
        return list(itertools.product(*self.steps))

    def __len__(self) -> int:
        return int(np.prod([len(s) for s in self.steps]))


def plan_tiles(image_shape: Sequence[int], tile: Sequence[int], overlap: float,
               padding: int | Sequence[int]) -> TilePlan:
    """Plan the tiles for an image of spatial shape ``image_shape`` (see module docstring)."""
    image_shape = tuple(int(n) for n in image_shape)
    tile = tuple(int(t) for t in tile)
    if len(tile) != len(image_shape):
        raise BioflowError(f"data.patch_size: {len(tile)} values for a {len(image_shape)}-D image "
                           f"of shape {image_shape}")
    pad = (int(padding),) * len(tile) if np.isscalar(padding) else tuple(int(p) for p in padding)
    core = tuple(t - 2 * p for t, p in zip(tile, pad))
    if min(core) < 1:
        raise BioflowError(f"inference.padding: {max(pad)} leaves no tile core for tiles of "
                           f"{list(tile)}; use a padding below half the patch size")
    if not 0 <= overlap < 1:
        raise BioflowError(f"inference.overlap: {overlap} must be in [0, 1)")
    extent = tuple(max(n, c) for n, c in zip(image_shape, core))
    steps = tuple(tuple(compute_steps(e, c, overlap)) for e, c in zip(extent, core))
    return TilePlan(image_shape, tile, pad, core, extent, steps)


def pad_image(image: np.ndarray, plan: TilePlan) -> np.ndarray:
    """The padded grid the tiles read; ``image`` is (*spatial, c)."""
    out = image
    for ax, (b, a) in enumerate(plan.pad_width):
        out = np.take(out, pad_indices(image.shape[ax], b, a), axis=ax)
    return out


# --- the driver ----------------------------------------------------------------------------

def batch_sizes(n_tiles: int, batch_size: int) -> list[int]:
    """Tiles per forward pass: as many passes as ``batch_size`` needs, filled evenly.

    25 tiles at batch 8 run as 7, 6, 6, 6 rather than 8, 8, 8, 1: a pass of one tile costs
    the CPU about four times a tile's share of a full pass (bf16, smp U-Net), so the even split
    saves ~8% of a 1024^2 image's time at the same peak memory (no pass exceeds ``batch_size``).
    """
    if n_tiles <= 0:
        return []
    k = -(-n_tiles // max(1, int(batch_size)))
    return [n_tiles // k + (1 if i < n_tiles % k else 0) for i in range(k)]


def predict_tiled(read_rows: Callable[[int, int], np.ndarray],
                  predict_fn: Callable[[np.ndarray], np.ndarray],
                  plan: TilePlan, n_out: int,
                  write_rows: Callable[[int, np.ndarray], None],
                  blending: str = "gaussian", batch_size: int = 4) -> None:
    """Blend tile predictions into the output, streaming along the first spatial axis.

    ``read_rows(a, b)`` returns rows ``[a, b)`` (first axis) of the *padded* image, all other
    axes padded too: shape ``(b - a, *padded_shape[1:], c)``. ``predict_fn(batch)`` maps
    ``(B, *tile, c)`` float32 to ``(B, *tile, n_out)``. ``write_rows(a, rows)`` receives final,
    normalised output rows ``[a, a + len(rows))`` of the image, shape ``(n, *image_shape[1:], n_out)``,
    in increasing order, each row exactly once.

    Peak memory is the input slabs of the tile rows one batch spans (one row when a row holds at
    least ``batch_size`` tiles) plus their accumulator rows, whatever the image size along the
    first axis.
    """
    p, c, t = plan.padding, plan.core, plan.tile
    n0 = plan.image_shape[0]
    rest = plan.extent[1:]
    w = blending_weights(c, blending)
    inner = [slice(pp, pp + cc) for pp, cc in zip(p, c)]

    # accumulators for extent rows [lo, lo + used): buffers reused in place (shifted down as rows
    # are flushed), reallocated only when a tile row needs more rows than they hold
    lo = used = 0
    acc = np.zeros((0, *rest, n_out), dtype=np.float32)
    wsum = np.zeros((0, *rest), dtype=np.float32)
    steps0 = plan.steps[0]
    others = list(itertools.product(*plan.steps[1:]))

    def flush(upto):
        nonlocal lo, used
        upto = min(upto, plan.extent[0])
        if upto <= lo:
            return
        k = upto - lo
        out_rows = acc[:k] / wsum[:k, ..., None]
        a, b = lo, min(upto, n0)
        if b > a:
            crop = (slice(0, b - a),) + tuple(slice(0, n) for n in plan.image_shape[1:])
            write_rows(a, np.ascontiguousarray(out_rows[crop]))
        del out_rows
        keep = used - k
        acc[:keep] = acc[k:used]  # numpy copies overlapping ranges correctly
        wsum[:keep] = wsum[k:used]
        acc[keep:used] = 0
        wsum[keep:used] = 0
        used, lo = keep, upto

    # Tiles are batched across tile rows (a row of few tiles would leave the batch half empty,
    # and small batches run the model well below its throughput); a tile row's slab is kept
    # until its last tile is predicted, and its finished output rows are flushed in order.
    slabs: dict[int, np.ndarray] = {}
    sizes = batch_sizes(len(plan), batch_size)
    left: dict[int, int] = {}
    pending: list[tuple[int, tuple[int, ...]]] = []
    done_rows = 0  # tile rows whose output rows are flushed

    def run(group):
        nonlocal done_rows
        tiles = np.stack([slabs[gi][(slice(None),) + tuple(slice(s, s + tt) for s, tt in zip(st, t[1:]))]
                          for gi, st in group]).astype(np.float32, copy=False)
        pred = np.asarray(predict_fn(tiles), dtype=np.float32)
        if pred.shape != (len(group), *t, n_out):
            raise ValueError(f"predict_fn returned {pred.shape}, expected {(len(group), *t, n_out)}")
        for (gi, st), pr in zip(group, pred):
            s0 = steps0[gi]
            core_pred = pr[tuple(inner)]
            dst = (slice(s0 - lo, s0 - lo + c[0]),) + tuple(slice(s, s + cc) for s, cc in zip(st, c[1:]))
            acc[dst] += core_pred * w[..., None]
            wsum[dst] += w
            left[gi] -= 1
        while done_rows < len(steps0) and left.get(done_rows) == 0:
            del slabs[done_rows]
            # rows before the next tile row's start are final
            flush(steps0[done_rows + 1] if done_rows + 1 < len(steps0) else plan.extent[0])
            done_rows += 1

    for gi, s0 in enumerate(steps0):
        slabs[gi] = read_rows(s0, s0 + t[0])
        left[gi] = len(others)
        need = s0 + c[0] - lo
        if need > acc.shape[0]:
            bigger = np.zeros((need, *rest, n_out), np.float32), np.zeros((need, *rest), np.float32)
            bigger[0][:used], bigger[1][:used] = acc[:used], wsum[:used]
            acc, wsum = bigger
        used = max(used, need)
        pending.extend((gi, st) for st in others)
        while sizes and len(pending) >= sizes[0]:
            group, pending = pending[:sizes[0]], pending[sizes[0]:]
            sizes.pop(0)
            run(group)
    if pending:
        run(pending)


@functools.lru_cache(maxsize=2)  # a dataset of one image size hits it for every image
def weight_sum(plan: TilePlan, blending: str) -> np.ndarray:
    """The blending weights of every tile summed over the extent, ``(*extent,)`` float32: the
    same for every image of ``plan``, so computed once per plan (two kept: one float per pixel)."""
    w = blending_weights(plan.core, blending)
    out = np.zeros(plan.extent, np.float32)
    for st in plan.starts():
        out[tuple(slice(s, s + c) for s, c in zip(st, plan.core))] += w
    return out


def predict_tiled_tensor(image, predict_fn, plan: TilePlan, n_out: int, blending: str = "gaussian",
                         batch_size: int = 4):
    """In-memory tiled prediction where ``image`` lives: a ``(*spatial, c)`` float32 torch tensor
    -> ``(*spatial, n_out)`` float32 tensor on the same device. ``predict_fn`` maps a
    ``(B, *tile, c)`` tensor to ``(B, *tile, n_out)`` on that device. Padding, cutting, blending
    and the final division run there too, so on a GPU only the result crosses to the host (the
    row-streaming :func:`predict_tiled` sends every batch's tiles and probabilities across).
    Same geometry, weights and batches as :func:`predict_tiled`."""
    import torch  # the numpy functions above stay torch-free

    dev = image.device

    def upload(a: np.ndarray):
        # from pinned memory, without waiting: a copy from pageable memory first waits for every
        # kernel queued on the GPU, leaving it idle while the next ones are queued
        t = torch.from_numpy(a)
        return t.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else t.to(dev)

    padded = image
    for ax, (b, a) in enumerate(plan.pad_width):
        if b or a:  # no padding on this axis: it is already padded_shape (extent = image)
            padded = padded.index_select(ax, upload(pad_indices(image.shape[ax], b, a)))
    w = upload(blending_weights(plan.core, blending))[..., None]
    acc = torch.zeros((*plan.extent, n_out), dtype=torch.float32, device=dev)
    inner = (slice(None),) + tuple(slice(p, p + c) for p, c in zip(plan.padding, plan.core))
    starts = plan.starts()
    i = 0
    # one weighting per batch and one addition per tile: on a GPU each small operation costs a
    # kernel launch, and launches, not arithmetic, are what the blending costs there
    for n in batch_sizes(len(starts), batch_size):
        group, i = starts[i:i + n], i + n
        tiles = torch.stack([padded[tuple(slice(s, s + t) for s, t in zip(st, plan.tile))] for st in group])
        pred = predict_fn(tiles)
        if tuple(pred.shape) != (len(group), *plan.tile, n_out):
            raise ValueError(f"predict_fn returned {tuple(pred.shape)}, expected {(len(group), *plan.tile, n_out)}")
        weighted = pred[inner] * w
        for st, wp in zip(group, weighted):
            acc[tuple(slice(s, s + c) for s, c in zip(st, plan.core))] += wp
    crop = tuple(slice(0, n) for n in plan.image_shape)
    wsum = upload(np.ascontiguousarray(weight_sum(plan, blending)[crop]))[..., None]
    return acc[crop] / wsum


def predict_tiled_array(image: np.ndarray, predict_fn, plan_or_tile, n_out: int,
                        overlap: float = 0.25, padding: int = 0, blending: str = "gaussian",
                        batch_size: int = 4) -> np.ndarray:
    """In-memory convenience: tiled prediction of ``image`` (*spatial, c) -> (*spatial, n_out)."""
    spatial = image.shape[:-1]
    plan = plan_or_tile if isinstance(plan_or_tile, TilePlan) else plan_tiles(spatial, plan_or_tile, overlap, padding)
    padded = pad_image(image, plan)
    out = np.empty((*spatial, n_out), dtype=np.float32)

    def write(a, rows):
        out[a:a + len(rows)] = rows

    predict_tiled(lambda a, b: padded[a:b], predict_fn, plan, n_out, write, blending, batch_size)
    return out
