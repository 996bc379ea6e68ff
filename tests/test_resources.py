"""Resource errors explained: running out of memory in training or prediction names the settings
to lower; a full disk while writing is one clear line and leaves no partial output."""

from __future__ import annotations

import errno

import pytest
import torch

from bioflow import workflows
from bioflow.errors import BioflowError
from bioflow.stage import Job


def _cls_cfg(make_cfg, pneumonia_folders):
    return make_cfg(data={"train": str(pneumonia_folders / "train"), "test": str(pneumonia_folders / "test")})


@pytest.mark.parametrize("exc", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                 RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                                              "can't allocate memory: you tried to allocate 8589934592 bytes"),
                                 MemoryError()], ids=["cuda", "cpu", "numpy"])
def test_out_of_memory_in_training_names_the_settings(exc, make_cfg, pneumonia_folders, monkeypatch):
    from bioflow.training import classification

    def boom(*args, **kwargs):
        raise exc
    monkeypatch.setattr(classification, "train", boom)
    cfg = _cls_cfg(make_cfg, pneumonia_folders)
    wf = workflows.get("classification")
    with pytest.raises(BioflowError) as err:
        wf.call("train", cfg, run_id=1)
    msg = str(err.value)
    assert msg.startswith("train: out of memory") and "\n" not in msg
    assert "train.batch_size" in msg and "data.patch_size" in msg


def test_out_of_memory_in_segmentation_prediction_names_tiles_and_budget(make_cfg, dsb_folders, monkeypatch):
    from bioflow.inference import segmentation

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory.")
    monkeypatch.setattr(segmentation, "predict", boom)
    cfg = make_cfg("semantic_segmentation", data={"train": str(dsb_folders / "train"),
                                                  "test": str(dsb_folders / "test"), "patch_size": [64, 64]})
    with pytest.raises(BioflowError) as err:
        workflows.get("semantic_segmentation").call("predict", cfg, run_id=1)
    msg = str(err.value)
    for key in ("inference.batch_size", "inference.memory_budget_mb", "data.patch_size", "inference.full_image"):
        assert key in msg


def test_other_errors_are_not_disguised(make_cfg, pneumonia_folders, monkeypatch):
    from bioflow.training import classification

    def boom(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr(classification, "train", boom)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        workflows.get("classification").call("train", _cls_cfg(make_cfg, pneumonia_folders), run_id=1)


def test_full_disk_is_one_line_and_leaves_no_partial_output(make_cfg, pneumonia_folders, tmp_path, monkeypatch):
    """The disk fills up in the middle of writing the manifest: the error names the stage and
    the file, and neither the manifest nor its temporary file is left behind."""
    import json

    real_dump = json.dump

    def dump_then_fill(obj, f, **kw):
        f.write("{\"partial\": ")  # half a JSON document on disk, then no space
        raise OSError(errno.ENOSPC, "No space left on device", f.name)
    monkeypatch.setattr(json, "dump", dump_then_fill)
    cfg = _cls_cfg(make_cfg, pneumonia_folders)
    wf = workflows.get("classification")
    out = tmp_path / "prepared" / "manifest_train.json"
    job = Job(input={}, output={"manifest": str(out)}, params={})
    with pytest.raises(BioflowError) as err:
        wf.call("validate_train", cfg, job)
    monkeypatch.setattr(json, "dump", real_dump)
    msg = str(err.value)
    assert msg.startswith(f"validate_train: no space left on the device writing {out};") and "\n" not in msg
    assert "experiment.result_dir" in msg
    assert list(out.parent.iterdir()) == []  # no manifest, no hidden temporary file


# --- a GPU requested but absent: the CPU, with a warning -------------------------------------

def test_gpu_requested_but_absent_falls_back_to_cpu_with_a_warning(monkeypatch, caplog):
    from bioflow.models.device import pick_device
    from bioflow.models import precision
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE"):
        monkeypatch.delenv(var, raising=False)
    assert pick_device("train").type == "cpu" and "GPU" not in caplog.text  # nothing asked: quiet
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # GPUs hidden on purpose: quiet too
    assert pick_device("train").type == "cpu" and "GPU" not in caplog.text
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    assert pick_device("predict").type == "cpu"
    assert "predict: a GPU was requested (SLURM_JOB_GPUS=0) but none is usable" in caplog.text
    # fp16 is a GPU feature: on the CPU it runs as auto (bf16 where native, else 32), with a warning
    assert precision.resolve("16", "cpu", key="train.precision").precision in ("bf16", "32")
    assert "train.precision: 16 needs a GPU" in caplog.text
    assert precision.resolve("bf16", "cpu").precision == "bf16"
