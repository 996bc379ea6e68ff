"""Shared test fixtures (others may append small fixtures at the end of this file)."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo_data"
SHARED_DATA = Path(os.environ.get("BIOFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def demo_data() -> Path:
    """The bundled demo data folder (committed; always present)."""
    return DEMO


@pytest.fixture
def shared_data() -> Path:
    """/work/shared/data (real datasets); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set BIOFLOW_SHARED_DATA)")
    return SHARED_DATA


# a registered model of each workflow (validation checks the name)
DEFAULT_ARCHITECTURE = {"classification": "simple_cnn", "semantic_segmentation": "unet_nd",
                        "patch_classification": "resnet18"}


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(workflow, **sections)`` -> validated config with result_dir under tmp_path.

    ``sections`` are nested dicts merged into the base: ``make_cfg("classification",
    data={"train": ...}, model={"n_classes": 3})``.
    """
    from bioflow.config import deep_update, validate

    def _make(workflow: str = "classification", **sections) -> dict:
        base = {"experiment": {"name": "test", "workflow": workflow,
                               "result_dir": str(tmp_path / "results")},
                "data": {}, "model": {"architecture": DEFAULT_ARCHITECTURE[workflow]}}
        return validate(deep_update(base, copy.deepcopy(sections)))

    return _make


@pytest.fixture
def pneumonia_folders(tmp_path) -> Path:
    """A small class-folder tree copied from the demo PNGs: {train,test}/{normal,pneumonia}/*.png
    (8 train + 3 test images per class)."""
    import pandas as pd
    table = pd.read_csv(DEMO / "pneumoniamnist" / "labels.csv")
    root = tmp_path / "pneumonia"
    for split, n in (("train", 8), ("test", 3)):
        for label, rows in table[table["split"] == split].groupby("label"):
            dst = root / split / label
            dst.mkdir(parents=True)
            for f in rows["file"].iloc[:n]:
                shutil.copy2(DEMO / "pneumoniamnist" / f, dst)
    return root


@pytest.fixture
def dsb_folders(tmp_path) -> Path:
    """A copy of demo_data/dsb2018 ({train,test}/{x,y}/*.tif, uint16 instance masks)."""
    root = tmp_path / "dsb2018"
    shutil.copytree(DEMO / "dsb2018", root)
    return root


@pytest.fixture
def nuclei3d_folders(tmp_path) -> Path:
    """A copy of demo_data/nuclei3d ({train,test}/{x,y}/*.tif, 32x128x128 volumes)."""
    root = tmp_path / "nuclei3d"
    shutil.copytree(DEMO / "nuclei3d", root)
    return root


# --- fast / end-to-end split ----------------------------------------------------------------
# End-to-end: runs Snakemake in a subprocess, a SLURM cluster, DDP processes, or trains beyond a
# few steps. `make test-fast` runs the rest (unit tests, < 2 min on 2 cores); `make test` all.
E2E_MODULES = {"test_dag", "test_workflow_e2e", "test_slurm", "test_ddp", "test_snakefile",
               "test_config_snakemake"}


# --- pytest-xdist (`make test` runs `-n 2 --dist loadgroup`) ----------------------------------
# Tests in one xdist_group run on the same worker, one after another:
# - every test on the SLURM cluster: one cluster (a machine-wide daemon) for all of them, started
#   once, and no job of another test competing for its (fake) GPUs;
# - a module whose module-scoped fixture is a real Snakemake run, and whose tests write files
#   of the same name into that run's folder.
# loadgroup hands out the groups first (largest first), then single tests in collection order.
XDIST_GROUP_MODULES = {"test_dag", "test_patch_workflow"}
XDIST_LONGEST = {"test_workflow_e2e", "test_kill"}  # 0.5-2.5 min per test (full run of 2026-11-24)


def _module(item) -> str:
    return item.module.__name__.rsplit(".", 1)[-1]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        module = _module(item)
        if module in E2E_MODULES or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.e2e)
        if item.get_closest_marker("slurm") or "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))
        elif module in XDIST_GROUP_MODULES:
            item.add_marker(pytest.mark.xdist_group(module))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # longest first: the minute-long Snakemake runs, then the other end-to-end tests, the
        # many short unit tests last, so no long run is left alone on one worker at the end
        # while the other idles (only the order changes; a stable sort, the same on every
        # worker, as xdist requires)
        def rank(item):
            return 0 if _module(item) in XDIST_LONGEST else 1 if item.get_closest_marker("e2e") else 2
        items.sort(key=rank)


@pytest.fixture(scope="session")
def cluster():
    """The test SLURM cluster (.ci/slurm_cluster.sh), started once for every test that uses it
    (all marked `slurm`, hence on one xdist worker); skips without the SLURM binaries."""
    from helpers_snakemake import slurm_cluster_fixture
    yield from slurm_cluster_fixture()


def pytest_configure(config):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        # More torch threads than cores (N workers training in-process, each worker's Snakemake
        # jobs, the SLURM profile's 8-thread train jobs): OpenMP threads that spin while they
        # wait take the cores from the ones that compute. Two 2-thread training processes on 2
        # cores: 12-14 s each spinning (the default), 6 s each with OMP_WAIT_POLICY=PASSIVE
        # (alone: 2.6 vs 2.9 s). Inherited by every subprocess and SLURM job; results unchanged.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        # In-process training: one share of the cores per worker (torch takes them all by
        # default). `make test-fast` -n 2 on 2 busy cores: 1.5 min CPU, 2.4 min wall with 1
        # thread per worker; 3.0 min CPU, 3.8 min wall with 2.
        import torch
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
