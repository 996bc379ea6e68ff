"""Streaming at scale: a generated 3D volume >= 4x ``inference.memory_budget_mb``, predicted
chunk by chunk with bounded memory; identical to in-memory tiling on a crop; throughput ratio.

The volume (uint8, uncompressed TIFF, ``--depth`` x 128 x 128, noise plus bright blobs) is
written to ``--out``. Each prediction runs in a child process that measures its own memory:
the resident set after imports, model and a warm-up forward (``base``), then the peaks of
anonymous (heap) and file-backed (memory-mapped input/output pages) resident memory while
:func:`bioflow.inference.segmentation.predict_image` runs, sampled every 50 ms, and VmHWM.
Model: a small 3D U-Net (bioflow ``UNetND``, features 8-16, untrained), tiles 32 x 64 x 64,
overlap 0 and padding 0 (each voxel predicted once: the 2-core machine gets through 69 MB in
minutes), batch 4, ``inference.precision: auto``.

    flock /tmp/bioflow_cpu.lock python benchmarks/streaming_scale.py --out /tmp/bench_stream
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
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
    seg.make_predict_fn(model, None, pol)(np.zeros((4, *TILE, 1), np.float32))  # warm-up
    base = status()
    peaks = {"RssAnon": 0.0, "RssFile": 0.0, "VmRSS": 0.0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            s = status()
            for k in peaks:
                peaks[k] = max(peaks[k], s[k])
            time.sleep(0.05)
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    row = seg.predict_image({"path": path}, {"ndim": 3, "channels": 1, "channel_axis": "auto"}, model, cfg,
                            {"min": [0.0], "max": [255.0]}, Path(out_dir), memory_budget_mb=budget_mb, policy=pol)
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    end = status()
    print(json.dumps({"streamed": bool(row["streamed"]), "tiles": row["tiles"], "seconds": round(wall, 2),
                      "model_mb": round(model_mb, 2), "base_mb": {k: round(v, 1) for k, v in base.items()},
                      "peak_mb": {k: round(v, 1) for k, v in peaks.items()}, "VmHWM_mb": round(end["VmHWM"], 1),
                      "extra_anon_mb": round(peaks["RssAnon"] - base["RssAnon"], 1),
                      "extra_total_mb": round(peaks["VmRSS"] - base["VmRSS"], 1)}))


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
    p.add_argument("--budget-mb", type=float, default=16.0)
    p.add_argument("--depth", type=int, default=4200, help="z slices of 128 x 128 (4200: 69 MB = 4.1x 16 MB)")
    p.add_argument("--crop", type=int, default=192, help="z slices of the in-memory comparison")
    args = p.parse_args()
    header(args)
    args.out.mkdir(parents=True, exist_ok=True)
    big = args.out / "volume.tif"
    vol = volume((args.depth, 128, 128))
    tifffile.imwrite(big, vol)  # uncompressed: read row by row through a memmap
    crop = args.out / "crop.tif"
    tifffile.imwrite(crop, vol[:args.crop])
    size_mb = vol.nbytes / 2**20
    del vol
    print(f"volume {args.depth}x128x128 uint8 = {size_mb:.1f} MiB = {size_mb / args.budget_mb:.2f}x the "
          f"{args.budget_mb:g} MiB budget")
    res = {"volume_mb": round(size_mb, 1), "budget_mb": args.budget_mb,
           "big_streamed": run_child(big, args.budget_mb, args.out / "big")}
    print(json.dumps(res["big_streamed"]))
    mem = run_child(crop, 1e6, args.out / "crop_mem")
    stream = run_child(crop, args.budget_mb / 64, args.out / "crop_stream")  # force streaming of the crop
    a = tifffile.imread(args.out / "crop_mem" / "per_image" / "crop.tif")
    b = tifffile.imread(args.out / "crop_stream" / "per_image" / "crop.tif")
    res.update(crop_in_memory=mem, crop_streamed=stream, crop_identical=bool(np.array_equal(a, b)),
               ratio_streamed_to_in_memory_time=round(stream["seconds"] / mem["seconds"], 3),
               big_extra_anon_over_budget=round(res["big_streamed"]["extra_anon_mb"] / args.budget_mb, 3))
    print(json.dumps({k: v for k, v in res.items() if k not in ("big_streamed",)}))
    (args.out / "streaming_scale.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
