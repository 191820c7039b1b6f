"""Safe saving and loading of trained denoisers: ``model.safetensors`` + ``config.json``.

No pickles: tensors go through safetensors, the configuration through JSON. ``config.json`` records
the SHA-256 of the tensor file and every tensor's shape, so a tampered, truncated or mismatched
checkpoint is refused with a :class:`CheckpointError` (a ``ValueError``) naming the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

from petuq_sirf.bayes.denoisers import Denoiser, DenoiserConfig, make_denoiser
from petuq_sirf.io.weights import CONFIG, WeightsError, load_weights, save_weights

FORMAT = "petuq-denoiser"
FORMAT_VERSION = 1

CheckpointError = WeightsError  # the name this module always raised


def save_denoiser(denoiser: Denoiser, folder: str | Path, extra: dict | None = None) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` (:mod:`petuq_sirf.io.weights`)."""
    record = {"config": denoiser.config.to_dict(), "info": denoiser.info, "extra": extra or {}}
    return save_weights(folder, denoiser.state_tensors(), FORMAT, FORMAT_VERSION, record)


def load_denoiser(folder: str | Path) -> Denoiser:
    """Rebuild a denoiser saved by :func:`save_denoiser` (verifies checksum, names and shapes)."""
    folder = Path(folder)
    tensors, record = load_weights(folder, FORMAT, FORMAT_VERSION)
    try:
        config = DenoiserConfig.from_dict(record["config"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"invalid denoiser configuration in {folder / CONFIG}: {exc}") from exc
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
        raise CheckpointError(f"cannot load {folder}: {exc}") from exc
    denoiser.info = dict(record.get("info", {}))
    return denoiser


def checkpoint_info(folder: str | Path) -> dict:
    """The JSON record of a checkpoint (config, training info, extra)."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return json.loads(path.read_text())


__all__ = ["CheckpointError", "checkpoint_info", "load_denoiser", "save_denoiser"]
