"""The one weight-file format of petuq_sirf: a folder holding ``model.safetensors`` and ``config.json``.

No pickles: tensors go through safetensors, everything else through JSON. ``config.json`` records the
format name and version, the SHA-256 of the tensor file and every tensor's shape, so a tampered,
truncated or mismatched file is refused with a :class:`WeightsError` (a ``ValueError``) naming it.
Both files are written atomically (temporary file, then rename), tensors first.

Used by the Bayesian denoisers (``bayes/checkpoint.py``) and the reconstruction networks
(``recon/weights.py``); what the record's ``config`` and ``info`` hold is theirs to define.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from petuq_sirf.io.atomic import atomic_write_bytes, atomic_write_text

TENSORS = "model.safetensors"
CONFIG = "config.json"


class WeightsError(ValueError):
    """A weights folder is missing pieces, was modified after saving or does not match its record."""


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def json_ready(value):
    """``value`` with every key a string and every leaf a JSON scalar (others as ``str``), for records."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


def save_weights(
    folder: str | os.PathLike, tensors: dict[str, torch.Tensor], fmt: str, version: int, record: dict
) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` (``record`` plus format and checksums)."""
    folder = Path(folder)
    if folder.is_file():
        raise WeightsError(f"{folder} is a file; weights are written as a folder (model.safetensors + config.json)")
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(folder / TENSORS, save(tensors, metadata={"format": fmt}))
    full = {
        "format": fmt,
        "format_version": version,
        **json_ready(record),
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "sha256": sha256_of(folder / TENSORS),
    }
    atomic_write_text(folder / CONFIG, json.dumps(full, indent=2))
    return folder


def read_record(folder: str | os.PathLike, fmt: str | None = None, version: int | None = None) -> dict:
    """The ``config.json`` record of a weights folder, checked for format and version when given."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / TENSORS).is_file():
        raise FileNotFoundError(f"{folder} is not a weights folder (needs {CONFIG} and {TENSORS})")
    try:
        record = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{folder / CONFIG} is not valid JSON: {exc}") from exc
    if fmt is not None and record.get("format") != fmt:
        raise WeightsError(f"{folder} holds {record.get('format')!r} weights, not {fmt!r}")
    if version is not None and record.get("format_version") != version:
        raise WeightsError(f"{folder} is version {record.get('format_version')} of {fmt!r}, this code reads {version}")
    return record


def load_weights(
    folder: str | os.PathLike, fmt: str | None = None, version: int | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, record)`` of a weights folder after checking format, checksum, names and shapes."""
    folder = Path(folder)
    record = read_record(folder, fmt, version)
    if sha256_of(folder / TENSORS) != record.get("sha256"):
        raise WeightsError(f"checksum mismatch: {folder / TENSORS} was modified after saving")
    try:
        tensors = load_file(str(folder / TENSORS))
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"cannot read {folder / TENSORS}: {exc}") from exc
    recorded = {k: list(v) for k, v in record.get("tensors", {}).items()}
    if {k: list(v.shape) for k, v in tensors.items()} != recorded:
        raise WeightsError(f"{folder / TENSORS} does not match the tensor list in {CONFIG}")
    return tensors, record


__all__ = [
    "CONFIG",
    "TENSORS",
    "WeightsError",
    "json_ready",
    "load_weights",
    "read_record",
    "save_weights",
    "sha256_of",
]
