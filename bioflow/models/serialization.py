"""Reading weight files without running code: ``torch.load(weights_only=True)`` or safetensors.

A pickle can execute anything while it is read, so bioflow never unpickles: its own checkpoints
hold tensors and plain data only, and a user file that needs pickle is refused with the
one-line command that converts it (to be run once, by someone who trusts the file).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from bioflow.errors import BioflowError

SAFETENSORS_SUFFIX = ".safetensors"


def convert_command(path: Path) -> str:
    """A shell command that turns a trusted pickled file into a plain state_dict (.pt)."""
    out = path.with_name(path.stem + ".state_dict.pt")
    return ("python -c \"import torch; ck = torch.load('%s', weights_only=False); "
            "torch.save(getattr(ck, 'state_dict', lambda: ck.get('state_dict', ck))(), '%s')\""
            % (path, out))


def load_tensors(path, key: str) -> Any:
    """The contents of a torch file (``torch.load(weights_only=True)``) or a ``.safetensors`` file.

    ``key`` names the config key or stage the file comes from, for the error messages. A file
    that needs pickle (Python objects besides tensors and plain data) is refused unread.
    """
    p = Path(path)
    if not p.is_file():
        raise BioflowError(f"{key}: file not found: {p}")
    if p.suffix.lower() == SAFETENSORS_SUFFIX:
        try:
            return load_file(p, device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise BioflowError(f"{key}: {p} is not a valid safetensors file ({exc})") from None
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise BioflowError(f"{key}: {p} needs pickle to load, which could run code, so bioflow refuses it; "
                               f"if you trust it, convert it once: {convert_command(p)}") from None
        raise BioflowError(f"{key}: {p} is not a torch or safetensors weights file ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any other decoding error means a bad file
        raise BioflowError(f"{key}: {p} is not a torch or safetensors weights file "
                           f"({type(exc).__name__}: {exc})") from None
