"""Predict stage on DSB2018: passes per image, and the fast path's IoU against fp32.

1. A model for the numbers to mean something: a bioflow checkpoint of the semseg_2d template
   (``--checkpoint``, e.g. the one ``segmentation_dsb2018.py`` trains), or else the template's
   smp Unet-resnet18 trained here for ``--train-steps`` steps (AdamW 1e-3, CE + Dice, batch 8,
   random 128^2 crops, bf16 autocast where native) on the first 80% of DSB2018 (sorted names;
   grey, percentile-normalised).
2. The held-out images (the last 20% of the sorted names, as ``segmentation_dsb2018.py``; grey):
   foreground IoU pooled over every pixel, predicted by
   :func:`bioflow.inference.segmentation.predict_image` at the template's inference settings
   with ``inference.precision`` 32 (fp32 NCHW) and auto (bf16 channels-last), same weights.
3. Wall time of the predict stage's per-image work (``predict_image``: read, normalise, tiled
   pass, outputs written, per-patch metrics) at the template defaults (one pass per tile,
   per-patch counts from the tiled prediction) and at the old defaults (``full_image: true``,
   ``patch_metrics: independent``: three passes), each against the tiled pass alone
   (``predict_in_memory`` on the same normalised images), on the first ``--n-time`` held-out
   images. Interleaved, minimum of ``--reps``.

    flock /tmp/bioflow_cpu.lock python benchmarks/predict_dsb2018.py --out /tmp/bench_predict [--checkpoint X.ckpt]
"""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import tifffile
import torch

from perf_common import best_of, device, header, parser, template

from bioflow.data.normalization import normalize
from bioflow.data.segmentation import to_channels
from bioflow.inference import segmentation as seg
from bioflow.inference import tiling
from bioflow.metrics.segmentation import confusion_counts, iou_from_counts
from bioflow.models import build_model, precision
from bioflow.models.checkpoint import load_model_from_checkpoint
from bioflow.training.losses import build_loss


def load(src, names):
    out = []
    for n in names:
        img = tifffile.imread(src / "images" / n)
        img = to_channels(img, 1) if img.ndim == 3 else img[..., None]
        out.append((n, img, (tifffile.imread(src / "masks" / n) > 0).astype(np.uint8)))
    return out


def train(cfg, data, steps: int, dev: torch.device, seed: int = 0):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    pol = precision.resolve("auto", dev)
    model = pol.prepare_model(build_model(cfg).train().to(dev))
    loss_fn = build_loss(cfg["train"], 2).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    big = [(normalize(im.astype(np.float32), None, cfg["data"]["normalization"])[..., 0], m)
           for _, im, m in data if min(m.shape) >= 256]
    t0 = time.time()
    for step in range(steps):
        xs, ys = [], []
        for i in rng.integers(0, len(big), 8):
            im, m = big[i]
            a, b = rng.integers(0, im.shape[0] - 127), rng.integers(0, im.shape[1] - 127)
            xs.append(im[a:a + 128, b:b + 128])
            ys.append(m[a:a + 128, b:b + 128])
        x = pol.prepare_input(torch.from_numpy(np.stack(xs)[:, None].astype(np.float32)).to(dev))
        y = torch.from_numpy(np.stack(ys).astype(np.int64)).to(dev)
        opt.zero_grad(set_to_none=True)
        with pol.autocast():
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()
        if step % 25 == 0:
            print(f"  train step {step}/{steps} loss {float(loss.detach()):.3f} ({time.time() - t0:.0f} s)", flush=True)
    return model.eval()


def main():
    p = parser(__doc__)
    p.add_argument("--checkpoint", default=None, help="a semseg_2d checkpoint trained on DSB2018 (else train here)")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--n-test", type=int, default=0, help="held-out images for the IoU (0: all of the last 20%%)")
    p.add_argument("--n-time", type=int, default=12, help="held-out images timed")
    p.set_defaults(reps=2)
    args = p.parse_args()
    header(args)
    args.out.mkdir(parents=True, exist_ok=True)
    dev = device(args)
    src = args.data / "dsb2018_stage1_train"
    names = sorted(q.name for q in (src / "images").glob("*.tif"))
    n_held = int(round(0.2 * len(names)))
    held = names[-n_held:][:args.n_test or None]
    cfg = template("semseg_2d")
    test = load(src, held)
    stats = None
    if args.checkpoint:
        model, hp = load_model_from_checkpoint(args.checkpoint)
        trained = hp["cfg"]
        cfg = {**cfg, "model": trained["model"], "data": {**cfg["data"], **{k: trained["data"][k] for k in
                                                                             ("normalization", "patch_size", "channels")}}}
        stats = hp["normalization"]
        print(f"model: {args.checkpoint} ({trained['model'].get('architecture')}, patch {cfg['data']['patch_size']})")
    else:
        model = train(cfg, load(src, names[:len(names) - n_held]), args.train_steps, dev)

    manifest = {"ndim": 2, "channels": 1, "channel_axis": "auto"}
    inf = cfg["inference"]
    base = {"experiment": cfg["experiment"], "model": cfg["model"], "train": cfg["train"],
            "data": {"patch_size": cfg["data"]["patch_size"], "normalization": cfg["data"]["normalization"]},
            "inference": inf}
    paths = []
    for n, im, m in test:  # the stage reads files: write the grey images once
        path = args.out / "test_x" / n
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, im[..., 0])
        paths.append((str(path), m))

    policies = {"32": precision.resolve("32", dev, channels_last=False), "auto": precision.resolve("auto", dev)}
    models = {}
    for k, pol in policies.items():  # the same weights, each prepared for its policy
        m2 = copy.deepcopy(model).eval()
        with torch.no_grad():  # fp32 NCHW: contiguous weights (training left them channels-last)
            for w in list(m2.parameters()) + list(m2.buffers()):
                w.data = w.data.contiguous()
        models[k] = pol.prepare_model(m2.to(dev))

    def stage(pkey, inference, subset=None):
        c = copy.deepcopy(base)
        c["inference"] = {**inf, **inference}

        def run():
            rows = []
            for i, (path, mask) in enumerate(paths[:subset]):
                rows.append(seg.predict_image({"path": path}, manifest, models[pkey], c, stats,
                                              args.out / f"run_{pkey}", mask, policy=policies[pkey]))
            return rows
        return run

    # normalised in the stored dtype, as the stage does
    normed = [normalize(im, stats, cfg["data"]["normalization"]) for _, im, _ in test[:args.n_time]]
    fn = seg.make_tensor_predict_fn(models["auto"], None, policies["auto"])

    def tiled_alone():  # the stage's in-memory tiled pass
        for im in normed:
            plan = tiling.plan_tiles(im.shape[:-1], cfg["data"]["patch_size"], float(inf["overlap"]), int(inf["padding"]))
            seg.predict_in_memory(im, fn, plan, 2, inf["blending"], int(inf["batch_size"]), dev)

    # IoU: fp32 vs the fast path, same weights, same settings
    ious, passes = {}, {}
    for k in policies:
        rows = stage(k, {})()
        passes[k] = sorted({r["passes"] for r in rows})
        counts = sum(confusion_counts(tifffile.imread(r["per_image"]), mask, 2, None) for r, (_, mask) in zip(rows, paths))
        ious[k] = float(iou_from_counts(counts)[2])
    t = best_of({"tiled_alone": tiled_alone, "stage_default": stage("auto", {}, args.n_time),
                 "stage_old_defaults": stage("auto", {"full_image": True, "patch_metrics": "independent"}, args.n_time)},
                args.reps)
    out = {"n_test": len(paths), "n_timed": len(normed), "model": args.checkpoint or f"trained here, {args.train_steps} steps",
           "iou_foreground_pooled": {k: round(v, 4) for k, v in ious.items()},
           "iou_auto_minus_fp32": round(ious["auto"] - ious["32"], 4), "policy_auto": policies["auto"].describe(),
           "passes_default": passes["auto"], "seconds": {k: round(v, 3) for k, v in t.items()},
           "ratio_stage_default_to_tiled": round(t["stage_default"] / t["tiled_alone"], 3),
           "ratio_stage_old_defaults_to_tiled": round(t["stage_old_defaults"] / t["tiled_alone"], 3)}
    print(json.dumps(out))
    (args.out / "predict_dsb2018.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
