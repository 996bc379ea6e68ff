"""Stage ``predict`` for semantic segmentation: tiled and whole-image inference, 2D and 3D.

For every test image (BiaPy's output folders, one TIFF per image with the image's base name):

* ``per_image/``: the image reconstructed from blended tiles (``inference.overlap``,
  ``padding``, ``blending``, ``batch_size``); class ids (``argmax: true``, uint8) or per-class
  probabilities (float32, channels last);
* ``per_image_binarized/``: foreground = ``1 - p(background) >= binarize_threshold`` (uint8 0/1);
* ``full_image/`` + ``full_image_binarized/`` (opt-in, ``inference.full_image: true``): the whole image
  in one forward pass (padded to the model's size divisor) when it fits ``memory_budget_mb``,
  else the tiled result (``full_image_mode`` in ``predictions.csv`` says which);
* ``run_dir/predictions.csv``: one row per image with its output paths;
* ``run_dir/patch_metrics.json`` (test masks known, ``inference.patch_metrics`` not off): TP/FP/FN
  on each non-overlapping ``patch_size`` patch, read by the metrics stage as the ``per_patch``
  level; ``source`` says whether they score the tiled prediction (default: no extra forward
  pass) or an independent forward pass per patch (BiaPy's definition).

One forward pass per tile by default: the whole-image and per-patch passes are opt-in, and the
``passes`` column of ``predictions.csv`` says which ran (with ``precision``/``channels_last``:
the policy of :mod:`bioflow.models.precision` the model ran at).

An image whose in-memory footprint (its buffers plus the model's activations for one batch of
tiles, :func:`forward_bytes`) exceeds ``memory_budget_mb`` is read and written row-chunk by
row-chunk (``bioflow.inference.streaming``), with the batch made smaller where the budget cannot
hold ``batch_size`` tiles' activations (``batch_size`` in ``predictions.csv``); the tiling code
is the same, so the result equals the in-memory one (bitwise where the batch is not reduced, and
at bf16, where a smaller batch computes the same values). Needs only the checkpoint (which
carries the normalization statistics).

A killed prediction does not redo finished images (:mod:`bioflow.inference.resume`): each
finished image's files are hard-linked into ``run_dir/.predict_done/<key>/`` with its CSV row
written last (the record), and a rerun with the same checkpoint and settings takes them from there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import weakref
from pathlib import Path

import numpy as np
import tifffile
import torch

from bioflow.data.augment import predict_tta, tta_flags
from bioflow.data.manifest import entries, load_manifest, relative_name
from bioflow.data.normalization import image_stats, normalize, normalize_with
from bioflow.data.segmentation import check_mask, read_mask, to_channels
from bioflow import progress
from bioflow.errors import BioflowError
from bioflow.geometry import pad_indices, pad_min
from bioflow.inference import resume, shards, streaming, tiling
from bioflow.io import atomic_path, write_json
from bioflow.metrics.segmentation import confusion_counts
from bioflow.models import precision
from bioflow.models.checkpoint import load_model_from_checkpoint
from bioflow.models.ensemble import load_ensemble
from bioflow.models.fusion import fold_batchnorm
from bioflow.models.segmentation import size_divisor

log = logging.getLogger(__name__)

FOLDERS = ("per_image", "per_image_binarized", "full_image", "full_image_binarized")
# rough activation memory of a forward pass per input pixel (float32 U-Net features), used only
# to decide whether whole-image inference fits the memory budget
ACTIVATION_BYTES_PER_PIXEL = 1024


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def make_tensor_predict_fn(model, tta: dict | None = None, policy: precision.Policy | None = None):
    """``(B, *spatial, c)`` float32 tensor on the model's device -> ``(B, *spatial, K)`` softmax
    probabilities there; ``tta``: :func:`~bioflow.data.augment.tta_flags` of the training
    augmentation, or None; ``policy``: precision and memory format (None: fp32, NCHW). The model
    must already be prepared for ``policy`` (:meth:`~bioflow.models.precision.Policy.prepare_model`)."""

    def probs(x):
        with policy.autocast() if policy is not None else contextlib.nullcontext():
            logits = model(x)
        return torch.softmax(logits.float(), dim=1)

    def run(x: torch.Tensor) -> torch.Tensor:
        # (B, *spatial, c) viewed as (B, c, *spatial) is already channels-last: no copy
        x = x.movedim(-1, 1)
        x = x if policy is not None and policy.channels_last else x.contiguous()
        with torch.inference_mode():
            return predict_tta(probs, x, tta, dense=True).movedim(1, -1)

    return run


def predict_in_memory(image: np.ndarray, predict_fn, plan: tiling.TilePlan, n_classes: int, blending: str,
                      batch: int, dev: torch.device) -> np.ndarray:
    """Tiled probabilities ``(*spatial, K)`` of an in-memory ``(*spatial, c)`` image, tiled on
    ``dev`` (:func:`~bioflow.inference.tiling.predict_tiled_tensor`; ``predict_fn`` from
    :func:`make_tensor_predict_fn`). The image crosses to the device once and its probabilities
    come back once: on a GPU, the per-batch copies and host blending of the row-streaming
    driver cost 5-7x the forward passes (``benchmarks/inference_speed.py``, H200)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(dev, torch.float32)
    probs = tiling.predict_tiled_tensor(x, predict_fn, plan, n_classes, blending, batch)
    del x
    return probs.cpu().numpy()


def make_predict_fn(model, tta: dict | None = None, policy: precision.Policy | None = None):
    """:func:`make_tensor_predict_fn` for numpy batches: ``(B, *spatial, c)`` float32 numpy ->
    ``(B, *spatial, K)`` numpy probabilities (the tiles cross to the model's device and back)."""
    dev = device_of(model)
    run_t = make_tensor_predict_fn(model, tta, policy)

    def run(batch: np.ndarray) -> np.ndarray:
        return run_t(torch.from_numpy(np.ascontiguousarray(batch)).to(dev)).cpu().numpy()

    return run


def in_memory_bytes(spatial, channels: int, n_classes: int, plan: tiling.TilePlan) -> int:
    """Peak bytes of in-memory tiled inference: padded float32 input + accumulators + outputs."""
    padded = int(np.prod(plan.padded_shape))
    px = int(np.prod(spatial))
    return 4 * (padded * channels + px * (n_classes + 1) + px * n_classes) + 2 * px


def stream_bytes(plan: tiling.TilePlan, channels: int, n_classes: int, batch: int) -> int:
    """Upper bound of the data buffers of streamed tiled inference with ``batch`` tiles per
    forward pass (see :func:`bioflow.inference.tiling.predict_tiled`): the float32 input slabs
    of the tile rows one batch spans plus the copies that reading and normalising one more
    slab makes, the accumulator rows of those tile rows (x2 while the buffer grows), the rows
    being flushed, and the batch's tiles and probabilities. Activations are counted apart
    (:func:`forward_bytes`)."""
    per_row = max(1, len(plan) // len(plan.steps[0]))      # tiles in one tile row
    n_rows = -(-batch // per_row) + 1                       # tile rows one batch can span
    t0 = plan.tile[0]
    slab = t0 * int(np.prod(plan.padded_shape[1:])) * channels
    rest = int(np.prod(plan.extent[1:]))
    acc = n_rows * t0 * rest * (n_classes + 1)
    tile_px = int(np.prod(plan.tile))
    return 4 * ((n_rows + 2) * slab + 2 * acc + 2 * t0 * rest * n_classes
                + batch * tile_px * (channels + 2 * n_classes))


_FORWARD_BYTES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def forward_bytes(model, tile, channels: int, policy: precision.Policy | None = None) -> int:
    """Estimated peak memory of the forward pass of one tile (one sample of a batch), from one
    forward pass of a blank tile: the largest total of layer outputs alive at once (each tracked
    until it is freed), x1.5 for the layers' own scratch memory (the 3D U-Net at bf16 on a CPU
    measured 1.3x its outputs), plus the input and the float32 logits and probabilities. Cached
    per model, tile, channels and policy."""
    key = (tuple(int(t) for t in tile), int(channels), policy)
    cache = _FORWARD_BYTES.setdefault(model, {})
    if key in cache:
        return cache[key]
    live, peak = [0], [0]

    def freed(n):
        live[0] -= n

    def hook(_mod, _inp, out):
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                n = t.untyped_storage().nbytes()
                live[0] += n
                peak[0] = max(peak[0], live[0])
                weakref.finalize(t, freed, n)

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    x = torch.zeros((1, int(channels), *key[0]), device=device_of(model))
    if policy is not None:
        x = policy.prepare_input(x)
    try:
        with torch.inference_mode(), policy.autocast() if policy is not None else contextlib.nullcontext():
            logits = model(x)
        n_out = int(logits.shape[1])
        del logits
    finally:
        for h in handles:
            h.remove()
    tile_px = int(np.prod(key[0]))
    cache[key] = int(1.5 * peak[0]) + 4 * tile_px * (int(channels) + 2 * n_out)
    return cache[key]


def stream_batch(plan: tiling.TilePlan, channels: int, n_classes: int, batch: int, per_tile: int,
                 budget: float) -> int:
    """The largest batch (at most ``batch``, at least 1) whose buffers and activations
    (``per_tile`` bytes each) fit ``budget`` bytes when streaming."""
    for b in range(batch, 0, -1):
        if stream_bytes(plan, channels, n_classes, b) + b * per_tile <= budget:
            return b
    return 1


def binarize(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Foreground (any class but 0) where ``1 - p(background) >= threshold``; uint8 0/1."""
    return ((1.0 - probs[..., 0]) >= threshold).astype(np.uint8)


def finalize(probs: np.ndarray, argmax: bool) -> np.ndarray:
    return np.argmax(probs, axis=-1).astype(np.uint8) if argmax else probs.astype(np.float32)


def pad_to_divisor(image: np.ndarray, div: int) -> np.ndarray:
    """Reflect-pad the end of each spatial axis of ``(*spatial, c)`` to a multiple of ``div``."""
    out = image
    for ax, n in enumerate(image.shape[:-1]):
        extra = (-n) % div
        if extra:
            out = np.take(out, pad_indices(n, 0, extra), axis=ax)
    return out


def predict_whole(image: np.ndarray, predict_fn, div: int) -> np.ndarray:
    """Whole-image inference (no tiling): pad to the size divisor, one forward pass, crop."""
    padded = pad_to_divisor(image, div)
    probs = predict_fn(padded[None])[0]
    return probs[tuple(slice(0, n) for n in image.shape[:-1])]


def patch_starts(spatial, tile) -> list[tuple[int, ...]]:
    """Starts of the non-overlapping ``tile`` patches covering an image of shape ``spatial``
    (an image smaller than the tile is one patch; the last patch of an axis ends at its end)."""
    extent = [max(int(n), int(t)) for n, t in zip(spatial, tile)]
    return [tuple(s) for s in tiling.plan_tiles(extent, tile, 0.0, 0).starts()]


def _patch_row(st, pred_valid, mask, tile, n_classes, ignore_index) -> dict | None:
    # only the part of the patch inside the original image is scored
    gt = mask[tuple(slice(s, s + v) for s, v in zip(st, pred_valid.shape))]
    if gt.size == 0:
        return None
    return {"start": list(st), "counts": confusion_counts(pred_valid, gt, n_classes, ignore_index).tolist()}


def patch_counts(image: np.ndarray, mask: np.ndarray, predict_fn, tile, n_classes: int,
                 batch_size: int, ignore_index=None) -> list[dict]:
    """Per-patch TP/FP/FN of the raw model output on non-overlapping patches, each patch its own
    forward pass (BiaPy per_patch; ``inference.patch_metrics: independent``)."""
    spatial = image.shape[:-1]
    img, _ = pad_min(image, None, tile)
    starts = patch_starts(spatial, tile)
    out = []
    for i in range(0, len(starts), batch_size):
        group = starts[i:i + batch_size]
        batch = np.stack([img[tuple(slice(s, s + t) for s, t in zip(st, tile))] for st in group])
        pred = np.argmax(predict_fn(batch), axis=-1)
        for st, pr in zip(group, pred):
            valid = tuple(slice(0, max(0, min(t, n - s))) for s, t, n in zip(st, tile, spatial))
            r = _patch_row(st, pr[valid], mask, tile, n_classes, ignore_index)
            if r is not None:
                out.append(r)
    return out


def patch_counts_tiled(pred: np.ndarray, mask: np.ndarray, tile, n_classes: int, ignore_index=None) -> list[dict]:
    """The same patches as :func:`patch_counts`, scored on the tiled prediction ``pred`` (class
    ids, ``(*spatial)``): no extra forward pass (``inference.patch_metrics: tiled``)."""
    out = []
    for st in patch_starts(pred.shape, tile):
        r = _patch_row(st, np.asarray(pred[tuple(slice(s, s + t) for s, t in zip(st, tile))]), mask, tile,
                       n_classes, ignore_index)
        if r is not None:
            out.append(r)
    return out


class _Outputs:
    """The tiled outputs of one image: arrays in memory, or files written row by row (streaming)."""

    def __init__(self, run_dir: Path, stem: str, spatial, n_classes: int, argmax: bool, streamed: bool,
                 threshold: float):
        self.paths = {f: run_dir / f / f"{stem}.tif" for f in FOLDERS}
        self.spatial, self.k, self.argmax, self.streamed, self.thr = tuple(spatial), n_classes, argmax, streamed, threshold
        pshape = self.spatial if argmax else (*self.spatial, n_classes)
        pdtype = np.uint8 if argmax else np.float32
        self.arrays, self.sinks = {}, {}
        for f in ("per_image", "per_image_binarized"):
            shape, dtype = (pshape, pdtype) if f == "per_image" else (self.spatial, np.uint8)
            if streamed:
                self.sinks[f] = streaming.RowSink(self.paths[f], shape, dtype)
            else:
                self.arrays[f] = np.empty(shape, dtype)

    def write_rows(self, a: int, probs: np.ndarray):
        for f, rows in (("per_image", finalize(probs, self.argmax)), ("per_image_binarized", binarize(probs, self.thr))):
            if self.streamed:
                self.sinks[f].write(a, rows)
            else:
                self.arrays[f][a:a + len(rows)] = rows

    def finish_tiled(self):
        for f in ("per_image", "per_image_binarized"):
            if self.streamed:
                self.sinks[f].commit()
            else:
                self.paths[f].parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(self.paths[f]) as tmp:
                    tifffile.imwrite(tmp, self.arrays[f], compression="zlib", photometric="minisblack")

    def per_image(self) -> np.ndarray:
        """The finished ``per_image`` output (read back from its file when streamed)."""
        return tifffile.memmap(self.paths["per_image"], mode="r") if self.streamed else self.arrays["per_image"]

    def abort(self):
        for sink in self.sinks.values():
            sink.discard()


def _write(path: Path, arr: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, arr, compression="zlib", photometric="minisblack")


def _copy(src: Path, dst: Path):
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def predict_image(entry: dict, manifest: dict, model, cfg: dict, stats, run_dir: Path,
                  mask: np.ndarray | None = None, memory_budget_mb: float | None = None,
                  policy: precision.Policy | None = None) -> dict:
    """Predict one manifest entry into the output folders; returns its CSV row (``passes``:
    the forward passes that ran: ``tiled``, ``+whole``, ``+patches``). ``policy``: precision and
    memory format the model was prepared for (None: fp32, NCHW)."""
    inf = cfg["inference"]
    ndim = int(cfg["experiment"]["ndim"])
    n_classes = int(cfg["model"]["n_classes"])
    channels = int(manifest["channels"])
    tile = [int(t) for t in cfg["data"]["patch_size"]]
    norm_cfg = cfg["data"]["normalization"]
    budget = float(memory_budget_mb if memory_budget_mb is not None else inf["memory_budget_mb"]) * 2**20
    # TTA uses only the transforms the model was trained with
    tta = tta_flags(cfg["train"]["augmentation"]) if inf["tta"] else None
    predict_fn = make_predict_fn(model, tta, policy)
    div = size_divisor(model)
    dev = device_of(model)
    name = relative_name(entry)
    stem = Path(name).stem
    thr = float(inf["binarize_threshold"])
    argmax = bool(inf["argmax"])

    src = streaming.open_rows(entry["path"], ndim, channels, manifest.get("channel_axis", "auto"))
    try:
        spatial = src.shape[:-1]
        plan = tiling.plan_tiles(spatial, tile, float(inf["overlap"]), int(inf["padding"]))
        batch = int(inf["batch_size"])
        per_tile = forward_bytes(model, tile, channels, policy)
        need = in_memory_bytes(spatial, channels, n_classes, plan) + batch * per_tile
        streamed = need > budget
        if streamed:
            batch = stream_batch(plan, channels, n_classes, batch, per_tile, budget)
            if stream_bytes(plan, channels, n_classes, batch) + batch * per_tile > budget:
                log.warning("%s: one tile needs ~%.0f MB (activations ~%.0f MB), more than "
                            "inference.memory_budget_mb; raise it or use a smaller data.patch_size", name,
                            (stream_bytes(plan, channels, n_classes, 1) + per_tile) / 2**20, per_tile / 2**20)
            elif batch < int(inf["batch_size"]):
                log.info("%s: %d tiles per forward pass (not inference.batch_size %d): the activations of "
                         "more do not fit inference.memory_budget_mb", name, batch, int(inf["batch_size"]))
        row = {"file": name, "shape": "x".join(map(str, spatial)), "streamed": streamed, "batch_size": batch}
        t0 = time.time()
        if not streamed:
            image = normalize(to_channels(src.read(0, spatial[0]), channels, entry["path"]), stats, norm_cfg)
            reader = None  # tiled where the model is (predict_tiled_tensor)
            if dev.type == "cuda" and need > torch.cuda.mem_get_info(dev)[0]:
                padded = tiling.pad_image(image, plan)  # fits the host, not the GPU: blend on the host
                reader = lambda a, b: padded[a:b]  # noqa: E731
        else:
            if norm_cfg["per_image"]:
                # the numbers normalize() takes from the whole image, from one pass over its rows
                stats = image_stats(_row_chunks(src, channels, entry["path"], budget), norm_cfg,
                                    int(np.prod(spatial)))
            image = None
            idx0 = pad_indices(spatial[0], *plan.pad_width[0])
            rest = [pad_indices(n, *pw) for n, pw in zip(spatial[1:], plan.pad_width[1:])]

            def reader(a, b):
                rows = idx0[a:b]
                lo, hi = int(rows.min()), int(rows.max()) + 1
                chunk = normalize_with(to_channels(src.read(lo, hi), channels, entry["path"]), stats, norm_cfg)
                chunk = chunk[rows - lo]
                for ax, idx in enumerate(rest, start=1):
                    chunk = np.take(chunk, idx, axis=ax)
                return chunk
            log.info("%s: %.0f MB > inference.memory_budget_mb: streaming row chunks", name, need / 2**20)

        outs = _Outputs(run_dir, stem, spatial, n_classes, argmax, streamed, thr)
        tiles = progress.Progress(f"predict {name}", len(plan), "tiles")

        def counted(fn):
            def run(batch):
                out = fn(batch)
                tiles.update(len(batch))
                return out
            return run
        try:
            if reader is None:
                outs.write_rows(0, predict_in_memory(image, counted(make_tensor_predict_fn(model, tta, policy)),
                                                     plan, n_classes, inf["blending"], batch, dev))
            else:
                tiling.predict_tiled(reader, counted(predict_fn), plan, n_classes, outs.write_rows,
                                     inf["blending"], batch)
            tiles.close()
            outs.finish_tiled()
            if mask is not None and inf["patch_metrics"] == "tiled":
                ids = outs.per_image()
                ids = ids if argmax else np.argmax(ids, axis=-1)
                row["_patches"] = patch_counts_tiled(ids, mask, tile, n_classes, cfg["train"]["ignore_index"])
        except BaseException:
            outs.abort()
            raise
        row["tiles"] = len(plan)
        row["seconds_tiled"] = round(time.time() - t0, 3)
        passes = ["tiled"]

        # whole-image inference when it fits, else the tiled result stands in
        padded_px = int(np.prod([n + (-n) % div for n in spatial]))
        fits = image is not None and padded_px * (ACTIVATION_BYTES_PER_PIXEL + 4 * (channels + n_classes)) <= budget
        if not inf["full_image"]:
            row["full_image_mode"] = "off"
        elif fits:
            probs = predict_whole(image, predict_fn, div)
            _write(run_dir / "full_image" / f"{stem}.tif", finalize(probs, argmax))
            _write(run_dir / "full_image_binarized" / f"{stem}.tif", binarize(probs, thr))
            row["full_image_mode"] = "whole"
            passes.append("whole")
        else:
            _copy(outs.paths["per_image"], run_dir / "full_image" / f"{stem}.tif")
            _copy(outs.paths["per_image_binarized"], run_dir / "full_image_binarized" / f"{stem}.tif")
            row["full_image_mode"] = "tiled"
        for f in FOLDERS:
            if row["full_image_mode"] != "off" or not f.startswith("full"):
                row[f] = str(run_dir / f / f"{stem}.tif")

        if mask is not None and image is not None and inf["patch_metrics"] == "independent":
            row["_patches"] = patch_counts(image, mask, predict_fn, tile, n_classes,
                                           int(inf["batch_size"]), cfg["train"]["ignore_index"])
            passes.append("patches")
        row["passes"] = "+".join(passes)
        row["seconds"] = round(time.time() - t0, 3)
        return row
    finally:
        src.close()


def _row_chunks(src, channels, path, budget: float):
    """The image's rows in order, in chunks of at most ~1/16 of the memory budget (the stats
    pass holds a float64 copy of one)."""
    n = src.shape[0]
    row_bytes = 8 * int(np.prod(src.shape[1:-1])) * channels
    step = max(1, int(budget // 16 // max(row_bytes, 1)))
    for a in range(0, n, step):
        yield to_channels(src.read(a, min(a + step, n)), channels, path)


def predict(cfg: dict, run_id, ckpt_path, manifest_path, run_dir, shard: tuple[int, int] | None = None) -> Path:
    """Stage predict (see the module docstring). Returns the path of ``predictions.csv``.
    ``shard=(k, n)``: only the k-th of n parts of the test images, skipping the images a
    killed run finished (see :mod:`bioflow.inference.shards`). ``ckpt_path`` a list: the
    ensemble of those models (:mod:`bioflow.models.ensemble`: their probabilities averaged)."""
    run_dir = Path(run_dir)
    manifest = load_manifest(manifest_path)
    test = entries(manifest, "test")
    if not test:
        raise BioflowError(f"{manifest_path}: no test images; set data.test")
    if isinstance(ckpt_path, (list, tuple)):
        model, hp = load_ensemble(ckpt_path)
        log.info("ensemble of %d models: %s", len(ckpt_path), ", ".join(map(str, ckpt_path)))
    else:
        model, hp = load_model_from_checkpoint(ckpt_path)
    policy = precision.resolve(cfg["inference"]["precision"], key="inference.precision")
    model = policy.prepare_model(fold_batchnorm(model).to(policy.device))
    log.info("predict: %s", policy.describe())
    trained = hp["cfg"]
    # what the model was trained with wins for the model-side keys (and TTA follows the
    # training augmentation)
    cfg = {**cfg, "model": trained["model"],
           "data": {**cfg["data"], "normalization": trained["data"]["normalization"],
                    "channels": trained["data"]["channels"]},
           "train": {**cfg["train"], "augmentation": trained["train"]["augmentation"]}}
    stats = hp["normalization"]  # the training statistics travel with the model
    n_classes = int(cfg["model"]["n_classes"])
    use_masks = bool(cfg["data"]["test_has_labels"])

    rows, patches = [], []
    t0 = time.time()
    # one resume mechanism for a whole run and for a shard (run_dir = the shard's working folder)
    done = resume.Done(run_dir, ckpt_path, {
        "inference": cfg["inference"], "patch_size": cfg["data"]["patch_size"],
        "labels": cfg["data"]["test_has_labels"], "ignore_index": cfg["train"]["ignore_index"]})
    mine = test[shards.part(len(test), 1, shard)]
    prog = progress.Progress("predict", len(mine), "images")
    for e in mine:
        row = _finished(done, e, run_dir)
        if row is None:
            mask = None
            if use_masks and e.get("mask"):
                mask = check_mask(read_mask(manifest, e), n_classes, e["mask"], cfg["train"]["ignore_index"])
            row = predict_image(e, manifest, model, cfg, stats, run_dir, mask, policy=policy)
            row = {**row, "precision": policy.precision, "channels_last": policy.channels_last}
            _mark_finished(done, e, row, run_dir)
        for p in row.pop("_patches", []):
            patches.append({"file": row["file"], **p})
        rows.append(row)
        prog.update(1, tiles=row.get("tiles"), passes=row.get("passes"))
    prog.close()
    shards.write_csv(rows, run_dir / "predictions.csv")
    if use_masks and cfg["inference"]["patch_metrics"] != "off":  # declared output (possibly no patches)
        write_json(run_dir / "patch_metrics.json", {"patch_size": cfg["data"]["patch_size"],
                                                      "n_classes": n_classes, "patches": patches,
                                                      "source": cfg["inference"]["patch_metrics"]})
    elif (run_dir / "patch_metrics.json").exists():  # stale, from a run with labels
        (run_dir / "patch_metrics.json").unlink()
    done.clear()
    log.info("predict: %d images in %.1fs -> %s", len(rows), time.time() - t0, run_dir)
    return run_dir / "predictions.csv"


# --- finished images of a killed run ---------------------------------------------------------

def _finished(done: resume.Done, entry: dict, run_dir: Path) -> dict | None:
    """The CSV row of an image a killed run finished (its files put back), else None."""
    row = done.get(done.name_of(entry["path"]))
    if row is None:
        return None
    files = [(done.dir / f / Path(row[f]).name, Path(row[f])) for f in FOLDERS if row.get(f)]
    if not all(src.is_file() for src, _ in files):
        return None
    for src, dst in files:
        _link(src, dst)
    log.info("%s: finished by an earlier, interrupted run; not predicted again", row["file"])
    return row


def _mark_finished(done: resume.Done, entry: dict, row: dict, run_dir: Path) -> None:
    for f in FOLDERS:
        if row.get(f):
            _link(Path(row[f]), done.dir / f / Path(row[f]).name)
    done.put(done.name_of(entry["path"]), row)  # last: the files above are complete


def _link(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (a copy where links are not supported), atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
