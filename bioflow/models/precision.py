"""The one precision and memory-format policy of training and inference.

``train.precision`` / ``inference.precision``:

* ``auto``: bf16 autocast on a CPU with native bf16 (AVX512-BF16 / AMX) and on a GPU that
  supports bf16; fp16 autocast with a gradient scaler on an older GPU; fp32 elsewhere;
* ``32``, ``bf16``, ``16``: that precision (``16`` asked for on a CPU runs as ``auto`` would,
  with a warning: CPUs have no fast fp16).

Memory format: convolutions run in channels-last (2D, ``NHWC``) / channels-last-3d (3D,
``NDHWC``) for the model's weights and its inputs, whatever the channel count: oneDNN on CPUs
and cuDNN on tensor-core GPUs pick their fast kernels for that layout (measured in
``benchmarks/inference_speed.py``). Weights keep their memory format through
``load_state_dict``, so checkpoints are unaffected.

Below training and inference (both import it); pure apart from reading the hardware.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bioflow.errors import BioflowError

log = logging.getLogger(__name__)

CHOICES = ("auto", "32", "bf16", "16")
_DTYPES = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}
_LIGHTNING = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Read from the CPU flags:
    oneDNN calls bf16 "supported" on any AVX512 core, where it is emulated and slower than
    fp32; its check is the fallback where the flags cannot be read (not Linux)."""
    flags = _cpu_flags()
    if flags:
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _cpu_flags() -> frozenset:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@dataclass(frozen=True)
class Policy:
    """What a stage runs at: ``precision`` (``32`` / ``bf16`` / ``16``), on ``device``
    (``cpu`` / ``cuda``), with ``channels_last`` weights and inputs, and why."""

    requested: str
    precision: str
    device: str
    channels_last: bool
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    @property
    def lightning(self) -> str:
        """The Lightning ``Trainer(precision=...)`` value (16 gets Lightning's gradient scaler)."""
        return _LIGHTNING[self.precision]

    @property
    def scaler(self) -> bool:
        return self.precision == "16"

    def autocast(self):
        """Context of a forward pass at this precision (no-op for fp32)."""
        if self.precision == "32":
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=self.dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """2D / 3D convolution weights (rank 4 / 5) to channels-last, in place; returns ``model``."""
        if self.channels_last:
            with torch.no_grad():
                for t in list(model.parameters()) + list(model.buffers()):
                    if t.dim() in (4, 5):
                        t.data = t.data.contiguous(memory_format=memory_format(t.dim() - 2))
        return model

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """A ``(N, C, *spatial)`` batch in the model's memory format (other ranks unchanged)."""
        if self.channels_last and x.dim() in (4, 5):
            x = x.contiguous(memory_format=memory_format(x.dim() - 2))
            if x.shape[1] == 1:
                # One channel: the strides contiguous() leaves are NCHW ones, and a convolution
                # then runs (and outputs) NCHW until a later layer converts. The same memory
                # with the channel stride 1 reads as channels-last (2D 1-channel U-Net: 12% faster).
                x = x.as_strided(x.shape, (x.stride(0), 1, *x.stride()[2:]))
            return x
        return x

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        fmt = "channels-last" if self.channels_last else "contiguous (NCHW)"
        return f"precision {self.precision} on {self.device}, {fmt} (asked: {self.requested}; {self.reason})"


def memory_format(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 3 else torch.channels_last


def resolve(requested: str, device: str | torch.device | None = None, key: str = "precision",
            channels_last: bool = True, training_3d: bool = False) -> Policy:
    """The :class:`Policy` for ``requested`` (a ``CHOICES`` value) on ``device`` (default:
    cuda when available, else cpu). ``key`` names the config key in messages.
    ``training_3d``: training a 3D model, which ``auto`` keeps in fp32 on a CPU (below)."""
    requested = str(requested)
    if requested not in CHOICES:
        raise BioflowError(f"{key}: '{requested}' is not one of {', '.join(CHOICES)}")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = "cuda" if dev.type == "cuda" else "cpu"
    if kind == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        hw = "GPU with bf16" if bf16_ok else "GPU without bf16"
    else:
        bf16_ok = cpu_has_native_bf16()
        hw = "CPU with native bf16" if bf16_ok else "CPU without native bf16"
    if requested == "16" and kind == "cpu":
        log.warning("%s: 16 needs a GPU; on this CPU it runs as auto", key)
        requested_eff = "auto"
    else:
        requested_eff = requested
    if requested_eff == "auto":
        if bf16_ok and kind == "cpu" and training_3d:
            # bf16 autocast in CPU training of 3D convolutions gave NaN outputs now and then
            # (about 1 run in 4 of tests/test_classification.py::test_3d_end_to_end); fp32 until
            # that is understood. 3D inference in bf16 showed no such problem.
            prec, reason = "32", f"auto: {hw}, but 3D training in bf16 is not yet stable on a CPU"
        elif bf16_ok:
            prec, reason = "bf16", f"auto: {hw}"
        elif kind == "cuda":
            prec, reason = "16", f"auto: {hw}, fp16 with a gradient scaler"
        else:
            prec, reason = "32", f"auto: {hw}"
    else:
        prec, reason = requested_eff, "as configured"
        if prec == "bf16" and not bf16_ok:
            reason = f"as configured, but this is a {hw}: emulated, likely slower than 32"
    return Policy(requested, prec, kind, bool(channels_last), reason)
