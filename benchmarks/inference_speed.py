"""Tiled inference speed: bioflow's tiled prediction vs the bare forward floor and MONAI.

For each case (2D 1 channel and 3 channels: the semseg_2d template model, smp Unet-resnet18,
256^2 tiles, batch 8, two 1024^2 images; 3D: the semseg_3d template's 3D U-Net with 64^3 tiles,
batch 2, a 96 x 128 x 128 volume), in one process, interleaved repetitions, minimum time:

* ``bioflow``: the predict stage's in-memory tiled pass (:func:`bioflow.inference.segmentation.predict_in_memory`:
  numpy image in, tiles cut and blended on the model's device, numpy probabilities out) at
  ``inference.precision: auto`` (the template's overlap 0.25 and padding), on the model as the
  predict stage prepares it (BatchNorm folded, channels-last); ``bioflow_rows``: the same
  through the row-streaming driver (:func:`bioflow.inference.tiling.predict_tiled_array`: each
  batch's tiles to the device and its probabilities back, blended on the host), the in-memory
  path before the device one; ``bioflow_on_device``: the device driver on an image already on the
  device, its probabilities left there (no host copies: MONAI's terms below);
* ``floor``: the fastest bare forward of that same model on the same tiles (pre-cut, already in
  the model's layout, channels-last with bf16 autocast where the hardware has it; batches of the
  same size); ``fp32_nchw``: the same tiles in fp32 NCHW through the unprepared model (what an
  unprepared caller gets);
* ``monai``: MONAI's ``sliding_window_inference`` with its defaults (overlap 0.25, constant
  blending, fp32 NCHW model, ``sw_batch_size`` = our batch) and, for the comparison at equal
  geometry, bioflow at padding 0 / overlap 0.25 (``bioflow_p0``).

Untrained weights (speed does not depend on them; eval-mode BatchNorm). Random images.

    flock /tmp/bioflow_cpu.lock python benchmarks/inference_speed.py --out /tmp/bench_inf
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch

from perf_common import best_of, device, header, parser, template

from bioflow.inference import tiling
from bioflow.inference.segmentation import make_predict_fn, make_tensor_predict_fn, predict_in_memory
from bioflow.models import build_model, precision
from bioflow.models.fusion import fold_batchnorm


def cut_tiles(image: np.ndarray, plan: tiling.TilePlan) -> np.ndarray:
    padded = tiling.pad_image(image, plan)
    return np.stack([padded[tuple(slice(s, s + t) for s, t in zip(st, plan.tile))] for st in plan.starts()])


def bare(model, tiles: torch.Tensor, batch: int, policy: precision.Policy):
    def run():
        with torch.inference_mode(), policy.autocast():
            for i in range(0, len(tiles), batch):
                model(tiles[i:i + batch])
    return run


def case(name: str, cfg: dict, images: list[np.ndarray], reps: int, dev: torch.device) -> dict:
    inf, tile = cfg["inference"], cfg["data"]["patch_size"]
    batch = int(inf["batch_size"])
    n_classes = int(cfg["model"]["n_classes"])
    ndim = len(tile)
    torch.manual_seed(0)
    auto = precision.resolve("auto", dev)
    fp32 = precision.resolve("32", dev, channels_last=False)
    m_cpu = build_model(cfg).eval()
    m_fp32 = copy.deepcopy(m_cpu).to(dev)
    # as the predict stage prepares it: BatchNorm folded, then channels-last (the floor uses it too)
    m_auto = auto.prepare_model(fold_batchnorm(m_cpu).to(dev))
    plans = [tiling.plan_tiles(im.shape[:-1], tile, float(inf["overlap"]), int(inf["padding"])) for im in images]
    plans0 = [tiling.plan_tiles(im.shape[:-1], tile, 0.25, 0) for im in images]
    tiles = np.concatenate([cut_tiles(im, p) for im, p in zip(images, plans)])
    t_nchw = torch.from_numpy(np.ascontiguousarray(np.moveaxis(tiles, -1, 1))).to(dev)
    t_cl = auto.prepare_input(t_nchw.clone())
    fn_auto = make_predict_fn(m_auto, None, auto)
    fn_t = make_tensor_predict_fn(m_auto, None, auto)

    def ours(plans=plans):
        def run():
            for im, p in zip(images, plans):
                predict_in_memory(im, fn_t, p, n_classes, inf["blending"], batch, dev)
        return run

    ims_dev = [torch.from_numpy(im).to(dev) for im in images]

    def on_device():
        for im, p in zip(ims_dev, plans):
            tiling.predict_tiled_tensor(im, fn_t, p, n_classes, inf["blending"], batch)

    def rows():
        for im, p in zip(images, plans):
            tiling.predict_tiled_array(im, fn_auto, p, n_classes, blending=inf["blending"], batch_size=batch)

    fns = {"bioflow": ours(), "bioflow_rows": rows, "bioflow_on_device": on_device,
           "floor": bare(m_auto, t_cl, batch, auto),
           "fp32_nchw": bare(m_fp32, t_nchw, batch, fp32)}
    try:
        from monai.inferers import sliding_window_inference
        # on the device, as MONAI's users pass them (its blending then runs there too)
        ims = [torch.from_numpy(np.ascontiguousarray(np.moveaxis(im, -1, 0)))[None].to(dev) for im in images]

        def monai_run():
            with torch.inference_mode():
                for x in ims:
                    sliding_window_inference(x, tile, batch, m_fp32)
        fns["monai"] = monai_run
        fns["bioflow_p0"] = ours(plans0)
    except ImportError:
        print("  (monai not installed: pip install -e .[bench])")
    t = best_of(fns, reps)
    # agreement of the fast path with fp32 on the same tiles
    with torch.inference_mode():
        ref = m_fp32(t_nchw[:batch]).argmax(1)
        with auto.autocast():
            fast = m_auto(t_cl[:batch]).float().argmax(1)
    agree = float((ref == fast).float().mean())
    # the device driver and the row driver blend the same tiles alike
    drivers_diff = float(np.abs(predict_in_memory(images[0], fn_t, plans[0], n_classes, inf["blending"], batch, dev)
                                - tiling.predict_tiled_array(images[0], fn_auto, plans[0], n_classes,
                                                             blending=inf["blending"], batch_size=batch)).max())
    out = {"case": name, "device": str(dev), "batch": batch, "tiles": int(len(tiles)), "tiles_padding0": int(sum(len(p) for p in plans0)),
           "policy": auto.describe(), "seconds": {k: round(v, 3) for k, v in t.items()},
           "argmax_agreement_fast_vs_fp32": round(agree, 5), "max_abs_diff_device_vs_row_driver": drivers_diff,
           "ratio_bioflow_to_floor": round(t["bioflow"] / t["floor"], 3),
           "ratio_bioflow_rows_to_floor": round(t["bioflow_rows"] / t["floor"], 3),
           "ratio_bioflow_on_device_to_floor": round(t["bioflow_on_device"] / t["floor"], 3),
           "ratio_floor_to_fp32_nchw": round(t["floor"] / t["fp32_nchw"], 3)}
    if "monai" in t:
        out["ratio_bioflow_to_monai"] = round(t["bioflow"] / t["monai"], 3)
        out["ratio_bioflow_p0_to_monai"] = round(t["bioflow_p0"] / t["monai"], 3)
        out["ratio_bioflow_on_device_to_monai"] = round(t["bioflow_on_device"] / t["monai"], 3)
    print(json.dumps(out))
    return out


def case_inputs(name: str, rng: np.random.Generator, quick: bool = False,
                n_images: int = 0) -> tuple[dict, list[np.ndarray]]:
    """The template config and random images of a case: 2d_1ch, 2d_3ch (two 1024^2 images) or 3d
    (one 96 x 128 x 128 volume, 64^3 tiles, batch 2); ``quick``: smaller images; ``n_images``:
    that many images (volumes) instead (a GPU needs more work per timing than a CPU)."""
    if name.startswith("2d"):
        ch = 1 if name == "2d_1ch" else 3
        side = 384 if quick else 1024
        return (template("semseg_2d", data={"channels": ch}),
                [rng.normal(size=(side, side, ch)).astype(np.float32) for _ in range(n_images or 2)])
    shape = (64, 96, 96, 1) if quick else (96, 128, 128, 1)
    return (template("semseg_3d", data={"patch_size": [64, 64, 64]}, inference={"batch_size": 2}),
            [rng.normal(size=shape).astype(np.float32) for _ in range(n_images or 1)])


def main():
    p = parser(__doc__)
    p.add_argument("--cases", default="2d_1ch,2d_3ch,3d", help="comma-separated subset of 2d_1ch,2d_3ch,3d")
    p.add_argument("--quick", action="store_true", help="small images: a smoke test, not a measurement")
    p.add_argument("--n-images", type=int, default=0, help="images (volumes) per case (0: 2 in 2D, 1 in 3D)")
    p.add_argument("--batch", type=int, default=0, help="tiles per forward pass (0: the template's inference.batch_size)")
    p.set_defaults(reps=2)
    args = p.parse_args()
    header(args)
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    results = []
    for c in args.cases.split(","):
        cfg, images = case_inputs(c, rng, args.quick, args.n_images)
        if args.batch:
            cfg["inference"]["batch_size"] = args.batch
        results.append(case(c, cfg, images, args.reps, device(args)))
    (args.out / "inference_speed.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
