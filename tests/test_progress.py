"""Progress lines at a steady rhythm (bioflow.progress) and the DataLoader settings (bioflow.data.loader)."""

import logging

import pytest

from bioflow import progress
from bioflow.data.loader import loader_kwargs, resolve_num_workers


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_lines_at_a_steady_rhythm_with_rate_fields_and_eta(caplog):
    clock = Clock()
    p = progress.Progress("predict", 100, "tiles", interval_s=10, bar=False, clock=clock)
    with caplog.at_level(logging.INFO, logger="bioflow.progress"):
        for i in range(100):
            clock.t += 1.0  # one tile a second
            p.update(1, loss=0.5)
        p.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10  # every 10 s, and the last one at 100/100
    assert lines[0].startswith("predict: 10/100 tiles | 1 tiles/s | loss 0.5 | ETA 0:01:30")
    assert "100/100 tiles" in lines[-1] and "ETA 0:00:00" in lines[-1]


def test_quick_loops_write_nothing_and_position_overrides(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="bioflow.progress"):
        with progress.Progress("predict", 3, "images", interval_s=30, bar=False, clock=clock) as p:
            p.update(1)
            p.update(1)
        assert not caplog.records
        p2 = progress.Progress("train", None, "items", interval_s=5, bar=False, clock=clock)
        clock.t = 6
        assert p2.update(8, position="epoch 1/3 step 1/10", eta_s=125.0)
    msg = caplog.records[-1].getMessage()
    assert msg.startswith("train: epoch 1/3 step 1/10 | 1.33 items/s") and msg.endswith("ETA 0:02:05")


def test_no_bar_without_a_terminal(capsys):
    p = progress.Progress("x", 2, bar=None)  # pytest's stderr is not a terminal
    assert p._bar is None


@pytest.mark.parametrize("value, cores, gpu, expected", [
    (3, 16, False, 3), ("auto", 2, False, 0), ("auto", 3, False, 0), ("auto", 8, False, 2),
    ("auto", 64, False, 4), ("auto", 2, True, 1), ("auto", 16, True, 8), ("auto", 1, True, 0)])
def test_num_workers_auto(value, cores, gpu, expected):
    assert resolve_num_workers(value, cores, gpu) == expected


def test_loader_kwargs_persistent_workers():
    kw = loader_kwargs(2)
    assert kw["num_workers"] == 2 and kw["persistent_workers"] is True
    assert loader_kwargs(0)["persistent_workers"] is False
