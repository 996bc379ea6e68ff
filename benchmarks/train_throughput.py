"""Training throughput: bioflow's shared engine vs a minimal hand-written PyTorch loop.

Same model (built from the template), same in-memory data, same batch, same loss and optimizer;
the only differences are what the engine adds: its precision / memory-format policy
(``train.precision: auto``), Lightning, logging, checkpoints. The loop is the plain fp32 NCHW
``zero_grad / forward / backward / step`` over a DataLoader of the same tensors.

* PneumoniaMNIST (classification_2d template: timm resnet18, 28^2 upsampled to 64^2, batch 64);
* DSB2018 tiles (semseg_2d template: smp Unet-resnet18, 256^2 crops of the images, batch 8,
  CE + Dice).

Images/s = items of the measured steps / their wall time (the first ``--skip`` steps of each
run are left out: oneDNN builds its kernels then). Interleaved: loop, bioflow, loop, bioflow.
The engine's own ``train_summary.json`` throughput (with the data-wait share) is printed too.

    flock /tmp/bioflow_cpu.lock python benchmarks/train_throughput.py --out /tmp/bench_train
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from perf_common import device, header, parser, sync, template

from bioflow.models import build_model
from bioflow.training import engine
from bioflow.training.losses import build_loss


class Stamps:
    def __init__(self):
        self.t = []

    def __call__(self):
        self.t.append(time.perf_counter())

    def rate(self, batch: int, skip: int) -> float:
        t = self.t[skip:]
        return batch * (len(t) - 1) / (t[-1] - t[0])


def plain_loop(cfg, ds, steps: int, stamps: Stamps, dev: torch.device):
    torch.manual_seed(0)
    model = build_model(cfg).train().to(dev)
    loss_fn = build_loss(cfg["train"], int(cfg["model"]["n_classes"])).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["train"]["lr"]))
    loader = DataLoader(ds, batch_size=int(cfg["train"]["batch_size"]), shuffle=True, drop_last=True,
                        pin_memory=dev.type == "cuda")
    for i, (x, y) in enumerate(loader):
        if i >= steps:
            break
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        sync()  # a step ends when its kernels have run
        stamps()


class DM(pl.LightningDataModule):
    def __init__(self, ds, batch):
        super().__init__()
        self.ds, self.batch = ds, batch
        self.train_dataset = ds

    def train_dataloader(self):
        return DataLoader(self.ds, batch_size=self.batch, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return DataLoader(torch.utils.data.Subset(self.ds, range(self.batch)), batch_size=self.batch)


class Timed(engine.BioflowModule):
    stamps: Stamps

    def on_train_batch_end(self, outputs, batch, batch_idx):
        sync()
        self.stamps()


def bioflow_fit(cfg, ds, steps: int, stamps: Stamps, out) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # no resume from an earlier run
    cfg = {**cfg, "train": {**cfg["train"], "epochs": 1, "steps_per_epoch": steps, "patience": 0,
                            "n_sample_images": 0, "max_time_minutes": None}}
    engine.seed_run(0)
    model = build_model(cfg)
    module = Timed(model, build_loss(cfg["train"], int(cfg["model"]["n_classes"])), cfg["train"], {},
                   {"cfg": cfg, "model_extra": {}})
    module.stamps = stamps
    return engine.fit(cfg, 1, module, DM(ds, int(cfg["train"]["batch_size"])), out / "ck" / "x_1-best.ckpt",
                      out / "run", monitor="train_loss", mode="min")


def pneumonia(args):
    import torch.nn.functional as F
    d = np.load(args.data / "pneumoniamnist" / "pneumoniamnist.npz")
    n = args.steps * 64 + 64
    x = torch.from_numpy(d["train_images"][:n].astype(np.float32) / 255.0)[:, None]
    x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.from_numpy(d["train_labels"][:n, 0].astype(np.int64))
    cfg = template("classification_2d", data={"channels": 1}, train={"class_weights": None})
    return cfg, TensorDataset(x, y)


def dsb_tiles(args):
    import tifffile
    from bioflow.data.segmentation import to_channels
    src = args.data / "dsb2018_stage1_train"
    names = sorted(p.name for p in (src / "images").glob("*.tif"))
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for name in names:
        img = tifffile.imread(src / "images" / name)
        img = to_channels(img, 1)[..., 0] if img.ndim == 3 else img
        if min(img.shape) < 256:
            continue
        m = tifffile.imread(src / "masks" / name) > 0
        a, b = rng.integers(0, img.shape[0] - 255), rng.integers(0, img.shape[1] - 255)
        crop = img[a:a + 256, b:b + 256].astype(np.float32)
        lo, hi = np.percentile(crop, (1, 99.8))
        xs.append(((crop - lo) / max(hi - lo, 1e-6)).astype(np.float32))
        ys.append(m[a:a + 256, b:b + 256].astype(np.int64))
        if len(xs) >= args.steps * 8 + 8:
            break
    cfg = template("semseg_2d")
    return cfg, TensorDataset(torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys)))


def main():
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=12, help="training steps per run")
    p.add_argument("--skip", type=int, default=2, help="first steps of each run not timed")
    p.add_argument("--cases", default="pneumonia,dsb2018")
    p.set_defaults(reps=2)
    args = p.parse_args()
    header(args)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for case in args.cases.split(","):
        cfg, ds = (pneumonia if case == "pneumonia" else dsb_tiles)(args)
        batch = int(cfg["train"]["batch_size"])
        rates = {"loop": [], "bioflow": []}
        summary = None
        for r in range(args.reps):
            s = Stamps()
            plain_loop(cfg, ds, args.steps, s, device(args))
            rates["loop"].append(s.rate(batch, args.skip))
            s = Stamps()
            summary = bioflow_fit(cfg, ds, args.steps, s, args.out / f"{case}_{r}")
            rates["bioflow"].append(s.rate(batch, args.skip))
        best = {k: max(v) for k, v in rates.items()}
        out = {"case": case, "batch": batch, "steps": args.steps, "images_per_s": {k: round(v, 2) for k, v in best.items()},
               "ratio_bioflow_to_loop": round(best["bioflow"] / best["loop"], 3),
               "bioflow_precision": summary["precision"], "bioflow_throughput": summary["throughput"]}
        print(json.dumps(out))
        results.append(out)
    (args.out / "train_throughput.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
