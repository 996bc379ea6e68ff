"""Streaming at scale: a generated 3D volume >= 4x ``inference.memory_budget_mb``, predicted
chunk by chunk with peak resident memory within the budget plus the model; identical to
in-memory tiling on a crop; throughput ratio.

The volume (uint8, uncompressed TIFF, ``--depth`` x 128 x 128, noise plus bright blobs) is
written to ``--out``. Each prediction runs in a fresh child process that measures itself:
``base`` = its resident set (VmRSS) after imports, model, a warm-up forward pass and
``malloc_trim`` (freed heap handed back, so nothing the run reuses hides in the base); then the
kernel's peak counter is reset (``/proc/self/clear_refs`` = 5) and after
:func:`bioflow.inference.segmentation.predict_image` the peak (VmHWM) is read: every resident
page counts, heap and mapped files alike, exactly (no sampling). The criterion: peak - base <=
``memory_budget_mb`` + the model's weights.
Model: a small 3D U-Net (bioflow ``UNetND``, features 8-16, untrained), tiles 32 x 64 x 64,
overlap 0 and padding 0 (each voxel predicted once: the 2-core machine gets through the volume
in minutes), ``inference.batch_size: 4`` (streaming lowers it to what the budget holds),
``inference.precision: auto``.

    flock /tmp/bioflow_cpu.lock python benchmarks/streaming_scale.py --out /tmp/bench_stream
"""

from __future__ import annotations

import ctypes
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from perf_common import header, parser

TILE = [32, 64, 64]


def status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) / 1024  # MiB
    return out


def child(path: str, budget_mb: float, out_dir: str) -> None:
    import torch
    from bioflow.inference import segmentation as seg
    from bioflow.models import precision
    from bioflow.models.segmentation import UNetND
    torch.manual_seed(0)
    pol = precision.resolve("auto")
    model = pol.prepare_model(UNetND(3, 1, 2, features=(8, 16)).eval())
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    cfg = {"experiment": {"ndim": 3}, "model": {"n_classes": 2}, "train": {"ignore_index": None},
           "data": {"patch_size": TILE, "normalization": {"type": "scale_range", "per_image": False}},
           "inference": {"overlap": 0.0, "padding": 0, "blending": "gaussian", "tta": False, "argmax": True,
                         "batch_size": 4, "full_image": False, "patch_metrics": "off", "binarize_threshold": 0.5}}
    fn = seg.make_predict_fn(model, None, pol)
    for b in (4, 1):  # warm-up: oneDNN builds its kernels per shape
        fn(np.zeros((b, *TILE, 1), np.float32))
    per_tile_mb = seg.forward_bytes(model, TILE, 1, pol) / 2**20
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = status()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    t0 = time.perf_counter()
    row = seg.predict_image({"path": path}, {"ndim": 3, "channels": 1, "channel_axis": "auto"}, model, cfg,
                            {"min": [0.0], "max": [255.0]}, Path(out_dir), memory_budget_mb=budget_mb, policy=pol)
    wall = time.perf_counter() - t0
    end = status()
    extra = end["VmHWM"] - base["VmRSS"]
    print(json.dumps({"streamed": bool(row["streamed"]), "batch_size": row["batch_size"], "tiles": row["tiles"],
                      "seconds": round(wall, 2), "model_mb": round(model_mb, 3),
                      "forward_estimate_per_tile_mb": round(per_tile_mb, 1),
                      "base_mb": {k: round(v, 1) for k, v in base.items()}, "end_mb": {k: round(v, 1) for k, v in end.items()},
                      "peak_minus_base_mb": round(extra, 1), "budget_mb": budget_mb,
                      "within_budget_plus_model": bool(extra <= budget_mb + model_mb)}))


def run_child(path, budget, out_dir) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", str(path), str(budget), str(out_dir)],
                       capture_output=True, text=True, cwd=Path(__file__).parent)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def volume(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 60, size=shape, dtype=np.uint8)
    for _ in range(shape[0] // 4):
        z, y, x = rng.integers(0, shape[0]), rng.integers(8, shape[1] - 8), rng.integers(8, shape[2] - 8)
        v[max(z - 3, 0):z + 3, y - 6:y + 6, x - 6:x + 6] = 200
    return v


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2], float(sys.argv[3]), sys.argv[4])
    import tifffile
    p = parser(__doc__)
    p.add_argument("--budget-mb", type=float, default=64.0)
    p.add_argument("--ratio", type=float, default=4.1, help="volume size / budget (sets the depth)")
    p.add_argument("--crop", type=int, default=256, help="z slices of the in-memory comparison")
    p.set_defaults(reps=2)
    args = p.parse_args()
    header(args)
    args.out.mkdir(parents=True, exist_ok=True)
    depth = math.ceil(args.ratio * args.budget_mb * 2**20 / (128 * 128) / TILE[0]) * TILE[0]
    big = args.out / "volume.tif"
    vol = volume((depth, 128, 128))
    tifffile.imwrite(big, vol)  # uncompressed: read row block by row block
    crop = args.out / "crop.tif"
    tifffile.imwrite(crop, vol[:args.crop])
    size_mb = vol.nbytes / 2**20
    del vol
    print(f"volume {depth}x128x128 uint8 = {size_mb:.1f} MiB = {size_mb / args.budget_mb:.2f}x the "
          f"{args.budget_mb:g} MiB budget", flush=True)
    res = {"volume_mb": round(size_mb, 1), "budget_mb": args.budget_mb,
           "volume_over_budget": round(size_mb / args.budget_mb, 2),
           "big_streamed": run_child(big, args.budget_mb, args.out / "big")}
    print(json.dumps(res["big_streamed"]), flush=True)
    # the crop: in memory (a budget it fits) and streamed (the same budget as the big volume),
    # interleaved, the minimum of --reps runs each
    runs = {"in_memory": [], "streamed": []}
    for _ in range(args.reps):
        runs["in_memory"].append(run_child(crop, 1e6, args.out / "crop_mem"))
        runs["streamed"].append(run_child(crop, args.budget_mb, args.out / "crop_stream"))
    assert not runs["in_memory"][0]["streamed"] and runs["streamed"][0]["streamed"]
    a = tifffile.imread(args.out / "crop_mem" / "per_image" / "crop.tif")
    b = tifffile.imread(args.out / "crop_stream" / "per_image" / "crop.tif")
    t = {k: min(r["seconds"] for r in v) for k, v in runs.items()}
    res.update(crop_slices=args.crop, crop_runs=runs, crop_identical=bool(np.array_equal(a, b)),
               crop_seconds=t, ratio_streamed_to_in_memory_time=round(t["streamed"] / t["in_memory"], 3),
               big_voxels_per_s=round(depth * 128 * 128 / res["big_streamed"]["seconds"]),
               crop_in_memory_voxels_per_s=round(args.crop * 128 * 128 / t["in_memory"]),
               crop_in_memory_peak_minus_base_mb=runs["in_memory"][0]["peak_minus_base_mb"])
    res["ratio_big_streamed_to_crop_in_memory_time_per_voxel"] = round(
        res["crop_in_memory_voxels_per_s"] / res["big_voxels_per_s"], 3)
    print(json.dumps({k: v for k, v in res.items() if k not in ("big_streamed", "crop_runs")}))
    (args.out / "streaming_scale.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
