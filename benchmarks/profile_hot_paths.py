"""Profile of the hot paths around the model: TIFF reading (with the dtype / colour conversion
to channels-last), normalisation, augmentation, tile extraction and blending.

Each case runs a bioflow function on real data (DSB2018 images, the napari nuclei 3D volume)
or, for augmentation and tiling, on arrays of the template's shapes; its wall time is the
minimum of ``--reps`` interleaved rounds after a warm-up, and ``--profile`` also writes a
cProfile listing per case (``<out>/profile_<case>.txt``, top functions by own time).
The model is left out of the tiling cases (a constant prediction): what is timed is bioflow's
own work per tile.

Before / after a change: run this script from the current tree against the old package
(``git archive <commit> | tar -x -C /tmp/old``; ``PYTHONPATH=/tmp/old python
benchmarks/profile_hot_paths.py ...``) and against the new one; the ratio of the two times is
the change's effect (``--compare old.json new.json`` prints it).

    flock /tmp/bioflow_cpu.lock python benchmarks/profile_hot_paths.py --out /tmp/bench_prof --profile
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np

from perf_common import header, parser


def cases(data: Path) -> dict:
    import tifffile
    import bioflow
    from bioflow.data.augment import augment
    from bioflow.data.normalization import normalize
    from bioflow.io import read_image
    from bioflow.inference.tiling import plan_tiles, predict_tiled_array

    print("bioflow from", Path(bioflow.__file__).parent, flush=True)
    dsb = sorted((data / "dsb2018_stage1_train" / "images").glob("*.tif"))[:60]
    nuc = data / "napari_bio_nuclei3d" / "nuclei.tif"
    imgs2d = [read_image(p, 2, 1) for p in dsb]
    vol = read_image(nuc, 3, 1)                       # (60, 256, 256, 1) uint16
    big_vol = np.concatenate([vol] * 4)               # 240 slices: a larger 3D case
    pct = {"type": "percentile", "per_image": True, "percentiles": [1.0, 99.8]}
    zs = {"type": "zscore", "per_image": True}
    aug2 = {"enabled": True, "probability": 0.5, "flips": True, "rot90": True, "affine": True,
            "brightness_contrast": True, "gaussian_noise": True}
    rng = np.random.default_rng(0)
    p2 = rng.random((1, 256, 256), dtype=np.float32)
    m2 = (p2[0] > 0.5).astype(np.uint8)
    p3 = rng.random((1, 32, 64, 64), dtype=np.float32)
    m3 = (p3[0] > 0.5).astype(np.uint8)
    img_t2 = rng.random((1024, 1024, 1), dtype=np.float32)
    img_t3 = rng.random((96, 256, 256, 1), dtype=np.float32)

    def const_pred(tile, batch):
        out = np.full((batch, *tile, 2), 0.5, np.float32)
        return lambda b: out[:len(b)]

    def tiled(img, tile, padding, batch):
        plan = plan_tiles(img.shape[:-1], tile, 0.25, padding)
        fn = const_pred(tile, batch)
        return lambda: predict_tiled_array(img, fn, plan, 2, blending="gaussian", batch_size=batch)

    def aug(x, m, n, seed=0):
        def run():
            r = np.random.default_rng(seed)
            for _ in range(n):
                augment(x, m, aug2, r)
        return run

    return {
        "tiff_read_2d_dsb60": lambda: [read_image(p, 2, 1) for p in dsb],
        "tiff_read_3d_nuclei_x5": lambda: [read_image(nuc, 3, 1) for _ in range(5)],
        "tiff_decode_only_2d_dsb60": lambda: [tifffile.imread(p) for p in dsb],
        "normalize_percentile_2d_dsb60": lambda: [normalize(im, None, pct) for im in imgs2d],
        "normalize_percentile_3d_240x256x256": lambda: normalize(big_vol, None, pct),
        "normalize_zscore_3d_240x256x256": lambda: normalize(big_vol, None, zs),
        "augment_2d_256_x100": aug(p2, m2, 100),
        "augment_3d_32x64x64_x100": aug(p3, m3, 100),
        "tiling_2d_1024_t256_p16_b8": tiled(img_t2, [256, 256], 16, 8),
        "tiling_3d_96x256x256_t32x64x64_p8_b4": tiled(img_t3, [32, 64, 64], 8, 4),
    }


def profile(fn, path: Path, top: int = 25) -> None:
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    path.write_text(s.getvalue())


def compare(old: Path, new: Path) -> None:
    a, b = json.loads(old.read_text())["seconds"], json.loads(new.read_text())["seconds"]
    for k in a:
        if k in b:
            print(f"{k:45s} {a[k]:8.3f} s -> {b[k]:8.3f} s  new/old {b[k] / a[k]:.3f}  speed-up {a[k] / b[k]:.2f}x")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--compare":
        return compare(Path(sys.argv[2]), Path(sys.argv[3]))
    p = parser(__doc__)
    p.add_argument("--profile", action="store_true", help="also write a cProfile listing per case")
    p.add_argument("--only", default="", help="comma-separated case name prefixes")
    p.add_argument("--name", default="hot_paths", help="name of the result file (<out>/<name>.json)")
    args = p.parse_args()
    header(args)
    args.out.mkdir(parents=True, exist_ok=True)
    fns = cases(args.data)
    if args.only:
        fns = {k: v for k, v in fns.items() if any(k.startswith(o) for o in args.only.split(","))}
    for fn in fns.values():  # warm-up
        fn()
    times = {k: [] for k in fns}
    for _ in range(args.reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    best = {k: round(min(v), 4) for k, v in times.items()}
    for k, v in best.items():
        print(f"{k:45s} {v:8.3f} s", flush=True)
    if args.profile:
        for k, fn in fns.items():
            profile(fn, args.out / f"profile_{k}.txt")
    (args.out / f"{args.name}.json").write_text(json.dumps({"seconds": best, "argv": sys.argv}, indent=1))


if __name__ == "__main__":
    main()
