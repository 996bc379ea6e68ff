"""Where tiled prediction spends its time beyond the bare forward (issue 11), 3D and 2D 3-channel
cases of ``inference_speed.py``, in one process, interleaved, minimum of ``--reps`` rounds:

* ``floor``: the bare forward of inference_speed.py (pre-cut channels-last tiles, bf16 autocast
  where the CPU has it, fixed batches);
* ``floor_even``: the same with bioflow's even split of the tiles over the passes;
* ``floor_softmax``: plus the float softmax and the channel-last numpy view of the output;
* ``predict_fn``: the predict stage's ``make_predict_fn`` on the same pre-cut tiles (numpy in,
  probabilities out);
* ``tiled``: the predict stage's in-memory pass, ``segmentation.predict_in_memory`` on the images
  (padding, cutting, blending on the model's device; numpy in and out);
* ``tiled_rows``: ``tiling.predict_tiled_array`` on the images (the row-streaming driver:
  blending on the host).

    python benchmarks/tiling_overhead.py [--reps 5]
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import torch

from perf_common import best_of, device, template
from bioflow.inference import tiling
from bioflow.inference.segmentation import make_predict_fn, make_tensor_predict_fn, predict_in_memory
from bioflow.models import build_model, precision
from bioflow.models.fusion import fold_batchnorm
from inference_speed import bare, case_inputs, cut_tiles


def chunks(x, sizes):
    """``x`` cut into consecutive batches of ``sizes``."""
    i = 0
    for s in sizes:
        yield x[i:i + s]
        i += s


ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--reps", type=int, default=5)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
ap.add_argument("--n-images", type=int, default=0, help="images (volumes) per case (0: as inference_speed.py)")
args = ap.parse_args()
dev = device(args)
torch.set_num_threads(args.threads)
rng = np.random.default_rng(0)
for name in ("3d", "2d_3ch"):
    cfg, images = case_inputs(name, rng, n_images=args.n_images)
    inf, tile = cfg["inference"], cfg["data"]["patch_size"]
    batch, K = int(inf["batch_size"]), int(cfg["model"]["n_classes"])
    torch.manual_seed(0)
    auto = precision.resolve("auto", dev)
    m = auto.prepare_model(fold_batchnorm(build_model(cfg).eval()).to(dev))
    plans = [tiling.plan_tiles(im.shape[:-1], tile, float(inf["overlap"]), int(inf["padding"])) for im in images]
    tiles = np.concatenate([cut_tiles(im, p) for im, p in zip(images, plans)])
    t_cl = auto.prepare_input(torch.from_numpy(np.ascontiguousarray(np.moveaxis(tiles, -1, 1))).to(dev))
    fn = make_predict_fn(m, None, auto)
    sizes = tiling.batch_sizes(len(tiles), batch)

    def fn_only():
        for b in chunks(tiles, sizes):
            fn(b)

    def floor_even():  # the floor with bioflow's even batch split
        with torch.inference_mode(), auto.autocast():
            for b in chunks(t_cl, sizes):
                m(b)

    def floor_softmax():
        with torch.inference_mode():
            for b in chunks(t_cl, sizes):
                with auto.autocast():
                    y = m(b)
                torch.softmax(y.float(), 1).movedim(1, -1).cpu().numpy()

    fn_t = make_tensor_predict_fn(m, None, auto)

    def tiled():
        for im, p in zip(images, plans):
            predict_in_memory(im, fn_t, p, K, inf["blending"], batch, dev)

    def tiled_rows():
        for im, p in zip(images, plans):
            tiling.predict_tiled_array(im, fn, p, K, blending=inf["blending"], batch_size=batch)

    fns = {"floor": bare(m, t_cl, batch, auto), "floor_even": floor_even, "floor_softmax": floor_softmax,
           "predict_fn": fn_only, "tiled": tiled, "tiled_rows": tiled_rows}
    t = best_of(fns, args.reps)
    print(name, len(tiles), "tiles, sizes", sizes[:3], json.dumps({k: round(v, 3) for k, v in t.items()}),
          json.dumps({k: round(v / t["floor"], 3) for k, v in t.items()}), flush=True)
