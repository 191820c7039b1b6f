"""Safe saving and loading of trained denoisers: ``model.safetensors`` + ``config.json``.

No pickles: tensors go through safetensors, the configuration through JSON. ``config.json`` records
the SHA-256 of the tensor file and every tensor's shape, so a tampered, truncated or mismatched
checkpoint is refused with a :class:`CheckpointError` (a ``ValueError``) naming the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from petuq_sirf.bayes.denoisers import Denoiser, DenoiserConfig, make_denoiser

FORMAT = "petuq-denoiser"
FORMAT_VERSION = 1
TENSORS = "model.safetensors"
CONFIG = "config.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, tampered with or does not match its configuration."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


def save_denoiser(denoiser: Denoiser, folder: str | Path, extra: dict | None = None) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in denoiser.state_tensors().items()}
    tmp = folder / (TENSORS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "method": denoiser.config.method})
    os.replace(tmp, folder / TENSORS)
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": denoiser.config.to_dict(),
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "sha256": _sha256(folder / TENSORS),
        "info": _json_safe(denoiser.info),
        "extra": _json_safe(extra or {}),
    }
    tmp = folder / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, folder / CONFIG)
    return folder


def load_denoiser(folder: str | Path) -> Denoiser:
    """Rebuild a denoiser saved by :func:`save_denoiser` (verifies checksum, names and shapes)."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / TENSORS).is_file():
        raise FileNotFoundError(f"{folder} is not a denoiser checkpoint (needs {CONFIG} and {TENSORS})")
    try:
        record = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{folder / CONFIG} is not valid JSON: {exc}") from exc
    if record.get("format") != FORMAT or record.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{folder} is not a {FORMAT} checkpoint of version {FORMAT_VERSION}")
    if _sha256(folder / TENSORS) != record.get("sha256"):
        raise CheckpointError(f"checksum mismatch: {folder / TENSORS} was modified after saving (tampered?)")
    try:
        config = DenoiserConfig.from_dict(record["config"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"invalid denoiser configuration in {folder / CONFIG}: {exc}") from exc
    try:
        tensors = load_file(str(folder / TENSORS))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {folder / TENSORS}: {exc}") from exc
    recorded = {k: list(v) for k, v in record.get("tensors", {}).items()}
    if {k: list(v.shape) for k, v in tensors.items()} != recorded:
        raise CheckpointError(f"{folder / TENSORS} does not match the tensor list in {CONFIG}")
    denoiser = make_denoiser(config)
    expected = denoiser.state_tensors()
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not match a {config.method} model: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )
    for name, value in expected.items():
        got = tensors[name]
        same = got.shape == value.shape if name != "particles" else got.shape[1:] == value.shape[1:]
        if not same or got.dtype != value.dtype:
            raise CheckpointError(
                f"tensor {name} has shape {tuple(got.shape)} / {got.dtype}, the {config.method} model "
                f"expects {tuple(value.shape)} / {value.dtype}"
            )
    try:
        denoiser.load_state_tensors(tensors)
    except RuntimeError as exc:
        raise CheckpointError(f"cannot load {folder / TENSORS}: {exc}") from exc
    denoiser.info = dict(record.get("info", {}))
    return denoiser


def checkpoint_info(folder: str | Path) -> dict:
    """The JSON record of a checkpoint (config, training info, extra)."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return json.loads(path.read_text())


__all__ = ["CheckpointError", "checkpoint_info", "load_denoiser", "save_denoiser"]
