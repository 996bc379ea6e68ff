"""Classification inference speed: timm resnet18 at 224^2, images/s, next to timm's published figures.

Three ways over the same model (the classification_2d template's model at 3 channels, 224^2,
1000 classes: timm ``resnet18``, untrained), one process, interleaved, best of ``--reps``:

* ``timm_way``: what timm's ``benchmark.py`` times for its published ``benchmark-infer-amp-nchw``
  figures: the bare model, NCHW, fp16 autocast on a GPU (fp32 on a CPU, as its CPU files), a
  random batch already on the device;
* ``bioflow_forward``: the same bare forward at bioflow's ``inference.precision: auto``
  (BatchNorm folded, channels-last, bf16 autocast where the hardware has it);
* ``bioflow_predict``: the predict stage's batch loop (:func:`bioflow.inference.classification.iter_proba`:
  host batch to the device from pinned memory, the policy, softmax, probabilities back to the
  host), no TTA, over ``--images`` host images in batches of ``--batch``.

With ``--cudnn-benchmark`` (GPU) the two bare forwards run again with cuDNN's autotuner on
(``torch.backends.cudnn.benchmark``; bioflow leaves it off: on an H200 it changed nothing here).

timm's figures (``results/`` of huggingface/pytorch-image-models, resnet18 at 224, AMP NCHW,
PyTorch 2.9.1) are for other cards; no H100 / H200 figure is published there.

    python benchmarks/classification_infer_speed.py --out /tmp/bench_cls_infer [--batch 256]
"""

from __future__ import annotations

import copy
import json

import torch

from perf_common import best_of, device, header, parser, sync, template

from bioflow.inference.classification import iter_proba
from bioflow.models import build_model, precision
from bioflow.models.fusion import fold_batchnorm

# resnet18, infer_img_size 224, infer_samples_per_sec (batch) in timm's results/ CSVs
TIMM_PUBLISHED = {
    "RTX 5090, benchmark-infer-amp-nchw-pt291-cu130-5090.csv": (19878.7, 1024),
    "RTX Pro 6000 Max-Q, benchmark-infer-amp-nchw-pt291-cu130-pro6000maxq.csv": (19210.05, 2048),
}


class PreBatched:
    """A loader of ready batches, as the stage's DataLoader yields them (``{"image": ...}``)."""

    def __init__(self, batches):
        self.batches = batches
        self.dataset = range(sum(len(b) for b in batches))  # what the stage's progress counts

    def __iter__(self):
        return iter({"image": b} for b in self.batches)


def main():
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=0, help="images per batch (0: 256 on a GPU, 32 on a CPU)")
    p.add_argument("--images", type=int, default=0, help="images per timed pass (0: 16 batches on a GPU, 4 on a CPU)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="also time the bare forwards with cuDNN's autotuner on")
    args = p.parse_args()
    header(args)
    args.out.mkdir(parents=True, exist_ok=True)
    dev = device(args)
    gpu = dev.type == "cuda"
    batch = args.batch or (256 if gpu else 32)
    n = args.images or batch * (16 if gpu else 4)
    cfg = template("classification_2d", data={"channels": 3, "patch_size": [224, 224]},
                   model={"n_classes": 1000, "architecture": "resnet18"})
    torch.manual_seed(0)
    auto = precision.resolve("auto", dev)
    base = build_model(cfg).eval()
    m_timm = copy.deepcopy(base).to(dev)
    m_auto = auto.prepare_model(fold_batchnorm(copy.deepcopy(base)).to(dev))
    x = torch.randn(batch, 3, 224, 224, device=dev)
    x_cl = auto.prepare_input(x.clone())
    n_batches = -(-n // batch)
    # four distinct host batches, cycled: the copies to the device cost the same whatever the content
    distinct = [torch.randn(batch, 3, 224, 224) for _ in range(min(4, n_batches))]
    if gpu:
        distinct = [h.pin_memory() for h in distinct]  # as the stage's DataLoader pins them on a GPU
    host = [distinct[i % len(distinct)] for i in range(n_batches)]
    timm_ctx = (lambda: torch.autocast("cuda", dtype=torch.float16)) if gpu else precision.resolve("32").autocast

    def timm_way(model=m_timm):
        def run():
            with torch.no_grad(), timm_ctx():
                for _ in range(n_batches):
                    model(x)
        return run

    def bioflow_forward():
        with torch.inference_mode(), auto.autocast():
            for _ in range(n_batches):
                m_auto(x_cl)

    def bioflow_predict():
        for _ in iter_proba(m_auto, PreBatched(host), dev, policy=auto):
            pass

    # the stage's loop (device copies one batch ahead on a GPU) returns what a plain forward does
    with torch.inference_mode(), auto.autocast():
        ref = [torch.softmax(m_auto(auto.prepare_input(h.to(dev))).float(), 1).cpu() for h in distinct]
    got = list(iter_proba(m_auto, PreBatched(distinct), dev, policy=auto))
    agree = max(float((torch.from_numpy(g) - r).abs().max()) for g, r in zip(got, ref))
    assert len(got) == len(ref) and agree < 1e-3, f"iter_proba differs from the plain forward by {agree}"

    fns = {"timm_way": timm_way(), "bioflow_forward": bioflow_forward, "bioflow_predict": bioflow_predict}
    t = best_of(fns, args.reps)
    out = {"device": str(dev), "batch": batch, "images": n_batches * batch, "policy": auto.describe(),
           "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
           "images_per_s": {k: round(n_batches * batch / v, 1) for k, v in t.items()}}
    if gpu and args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
        t_on = best_of({"timm_way": timm_way(copy.deepcopy(base).to(dev)), "bioflow_forward": bioflow_forward}, args.reps)
        out["images_per_s_cudnn_benchmark_on"] = {k: round(n_batches * batch / v, 1) for k, v in t_on.items()}
        torch.backends.cudnn.benchmark = False
    ips = out["images_per_s"]
    out["ratio_bioflow_forward_to_timm_way"] = round(ips["bioflow_forward"] / ips["timm_way"], 3)
    out["ratio_bioflow_predict_to_bioflow_forward"] = round(ips["bioflow_predict"] / ips["bioflow_forward"], 3)
    if gpu:
        out["timm_published"] = {k: {"images_per_s": v, "batch": b,
                                     "ratio_bioflow_forward_to_published": round(ips["bioflow_forward"] / v, 3)}
                                 for k, (v, b) in TIMM_PUBLISHED.items()}
        out["gpu_memory_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    sync()
    print(json.dumps(out))
    (args.out / f"classification_infer_speed_{dev.type}_b{batch}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
