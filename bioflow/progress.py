"""Progress you can follow in a cluster log: a line at a steady rhythm, a live bar on a terminal.

Every long loop (training steps, prediction tiles and images, validation of many files) reports
through :class:`Progress`: at most every ``INTERVAL_S`` seconds (and when it finishes) it logs

    train: epoch 3/100 step 20/50 | 41.2 images/s | train_loss 0.412 val_iou 0.713 | ETA 0:12:31

so ``tail -f`` on a SLURM job's log shows where it is. A tqdm bar is drawn only when stderr is a
terminal (Snakemake's log files never get one).

Bottom layer: standard library and tqdm only.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from datetime import timedelta

log = logging.getLogger("bioflow.progress")

# seconds between two progress lines in the log: often enough for `tail -f`, rare enough that a
# 12-hour job's log stays readable (~1,400 lines)
INTERVAL_S = 30.0


def is_terminal(stream=None) -> bool:
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return str(timedelta(seconds=int(round(max(seconds, 0.0)))))


def format_fields(fields: dict) -> str:
    parts = []
    for k, v in fields.items():
        if v is None:
            continue
        parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return " ".join(parts)


class Progress:
    """Count ``unit`` items of a loop of ``total`` (None: unknown) and report at a steady rhythm.

    ``update(n, **fields)``: ``n`` more items done; ``fields`` (losses, metrics) go into the
    next line. ``position`` (e.g. ``"epoch 3/100 step 20/50"``) replaces the ``done/total``
    count when given. ``eta_s``: an ETA computed by the caller (training knows its epochs).
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "items",
                 interval_s: float = INTERVAL_S, logger: logging.Logger | None = None,
                 bar: bool | None = None, clock=time.monotonic):
        self.label, self.total, self.unit = label, total, unit
        self.interval_s = float(interval_s)
        self.log = logger or log
        self.clock = clock
        self.t0 = self.t_line = clock()
        self.done = self.done_line = 0
        self.lines = 0
        self.fields: dict = {}
        self._bar = None
        self._lock = threading.Lock()  # validation counts from worker threads
        if bar if bar is not None else is_terminal():
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=label, unit=f" {unit}", leave=False, dynamic_ncols=True)

    def rate(self) -> float:
        """Items per second since the start."""
        dt = self.clock() - self.t0
        return self.done / dt if dt > 0 else 0.0

    def eta(self) -> float | None:
        if self.total is None or self.done == 0:
            return None
        return (self.total - self.done) / max(self.rate(), 1e-12)

    def update(self, n: int = 1, position: str | None = None, eta_s: float | None = None, force: bool = False,
               **fields) -> bool:
        """Count ``n`` items; log a line when ``INTERVAL_S`` has passed (or ``force``). Returns
        whether a line was written."""
        with self._lock:
            self.done += n
            self.fields.update(fields)
            if self._bar is not None:
                self._bar.update(n)
                if fields:
                    self._bar.set_postfix_str(format_fields(self.fields), refresh=False)
            now = self.clock()
            if not force and now - self.t_line < self.interval_s:
                return False
            self._line(now, position, eta_s)
            return True

    def _line(self, now: float, position: str | None, eta_s: float | None) -> None:
        dt = now - self.t_line
        rate = (self.done - self.done_line) / dt if dt > 0 else self.rate()
        where = position or (f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}")
        parts = [f"{self.label}: {where}", f"{rate:.3g} {self.unit}/s"]
        extra = format_fields(self.fields)
        if extra:
            parts.append(extra)
        parts.append(f"ETA {format_eta(eta_s if eta_s is not None else self.eta())}")
        self.log.info(" | ".join(parts))
        self.t_line, self.done_line = now, self.done
        self.lines += 1

    def close(self, position: str | None = None) -> None:
        """A last line (when anything was counted and the loop took a while), and the bar closed."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.done and self.done > self.done_line and self.clock() - self.t0 >= self.interval_s:
            self._line(self.clock(), position, 0.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
