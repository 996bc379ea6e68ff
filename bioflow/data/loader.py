"""DataLoader settings shared by every workflow: ``train.num_workers: auto`` and its friends.

``auto`` counts the cores the job has (Snakemake's ``threads``, which the stage script hands to
``torch.set_num_threads``): on a GPU every core but one loads data (at most 8); on a CPU the
same cores also compute, so a quarter of them load (at most 4) and a job with fewer than 4 cores
loads in the main process, where worker processes would only take cores from the model. Workers
persist across epochs (no re-fork per epoch) and batches go to pinned memory when a GPU trains.
"""

from __future__ import annotations

import torch

MAX_WORKERS_GPU = 8
MAX_WORKERS_CPU = 4


def resolve_num_workers(value, cores: int | None = None, gpu: bool | None = None) -> int:
    """``train.num_workers`` as a count; ``auto`` from ``cores`` (default: torch's thread count,
    set from the job's cores) and whether a GPU computes."""
    if value != "auto":
        return int(value)
    cores = int(cores if cores is not None else torch.get_num_threads())
    gpu = torch.cuda.is_available() if gpu is None else gpu
    if gpu:
        return max(0, min(cores - 1, MAX_WORKERS_GPU))
    return 0 if cores < 4 else min(cores // 4, MAX_WORKERS_CPU)


def loader_kwargs(num_workers) -> dict:
    """Keyword arguments of ``torch.utils.data.DataLoader`` for ``train.num_workers``."""
    n = resolve_num_workers(num_workers)
    return {"num_workers": n, "persistent_workers": n > 0, "pin_memory": torch.cuda.is_available()}


def device_batches(batches, device):
    """The dict batches of ``batches`` with their tensors on ``device``. On a GPU each batch's
    copy is queued on a side stream one batch ahead, so it runs while the previous batch
    computes (from pinned memory, which :func:`loader_kwargs` asks for on a GPU): copied in
    line, resnet18 at 224^2 predicted at 0.68x its forward rate on an H200
    (``benchmarks/classification_infer_speed.py``). Elsewhere a plain ``.to``."""
    def move(b, **kw):
        return {k: v.to(device, **kw) if torch.is_tensor(v) else v for k, v in b.items()}

    if torch.device(device).type != "cuda":
        for b in batches:
            yield move(b)
        return
    side = torch.cuda.Stream(device)
    main = torch.cuda.current_stream(device)

    def send(b):
        if b is None:
            return None
        with torch.cuda.stream(side):
            return move(b, non_blocking=True)

    it = iter(batches)
    ahead = send(next(it, None))
    while ahead is not None:
        main.wait_stream(side)  # this batch's copy is done before its compute starts
        cur = ahead
        for v in cur.values():
            if torch.is_tensor(v):
                v.record_stream(main)  # allocated on the side stream, used on the main one
        ahead = send(next(it, None))
        yield cur
