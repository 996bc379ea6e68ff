"""Reading weight files without running code: ``torch.load(weights_only=True)`` or safetensors.

A pickle can execute anything while it is read, so bioflow never unpickles: its own checkpoints
hold tensors and plain data only, and a user file that needs pickle is refused with the
one-line command that converts it (to be run once, by someone who trusts the file). The one
exception, a scikit-learn head (joblib), is read here too: only from a folder the config names
and only when its SHA-256 matches the one bioflow recorded when it wrote it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from bioflow.errors import BioflowError
from bioflow.io import file_sha256

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


def dump_joblib(obj, path) -> str:
    """Write ``obj`` with joblib; returns the file's SHA-256 (record it for :func:`load_joblib`)."""
    import joblib  # scikit-learn's own format; only the patch workflow needs it
    joblib.dump(obj, path)
    return file_sha256(path)


def load_joblib(path, allowed_dirs, sha256: str | None, key: str):
    """Unpickle a joblib file bioflow wrote, refusing it unless it lies in one of
    ``allowed_dirs`` (folders the config names) and matches the recorded ``sha256``."""
    import joblib
    path = Path(path)
    if path.parent.resolve() not in {Path(a).resolve() for a in allowed_dirs}:
        raise BioflowError(f"{key}: {path.parent} is not a folder the config names; joblib files run code "
                           f"when loaded, so bioflow reads them only from the folder given in {key}")
    if sha256 is None or file_sha256(path) != sha256:
        raise BioflowError(f"{key}: {path} does not match the SHA-256 recorded when it was written "
                           f"(changed since); refusing to load it")
    return joblib.load(path)
