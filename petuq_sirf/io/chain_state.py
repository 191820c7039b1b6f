"""Resumable sampler state: one safetensors file holding the tensors and a JSON record in its metadata.

A long Markov-chain run (PnP-ULA on a 3D scan can take hours) writes its state every so many steps so that a
crash or a killed job loses at most that stretch. One file, written with :func:`~petuq_sirf.io.atomic.atomic_write_bytes`
(temporary file, fsync, rename), so a reader sees the previous complete state or the new complete one, never a
partial write. No pickles: tensors through safetensors, everything else (format, version, the run's settings
fingerprint, counters) as JSON in the safetensors metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from petuq_sirf.io.atomic import atomic_write_bytes

FORMAT = "petuq-chain-state"
VERSION = 1


class ChainStateError(ValueError):
    """A chain-state file is unreadable, of another format, or was made by a different run."""


def save_chain_state(path: str | os.PathLike, tensors: dict[str, torch.Tensor], record: dict) -> Path:
    """Atomically write ``tensors`` (contiguous CPU copies) and the JSON-ready ``record`` to ``path``."""
    meta = {"format": FORMAT, "version": str(VERSION), "record": json.dumps(record, sort_keys=True)}
    payload = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=meta)
    return atomic_write_bytes(path, payload)


def load_chain_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, record)`` of a file written by :func:`save_chain_state`; one-line :class:`ChainStateError`
    for anything else."""
    path = Path(path)
    raw = path.read_bytes()  # FileNotFoundError passes through: no state yet
    try:
        tensors = load(raw)
        size = int.from_bytes(raw[:8], "little")  # safetensors: u64 header length, then the JSON header
        meta = json.loads(raw[8 : 8 + size]).get("__metadata__") or {}
    except (SafetensorError, ValueError) as exc:
        raise ChainStateError(f"{path} is not a readable chain-state file: {exc}") from None
    if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
        raise ChainStateError(
            f"{path} is not a {FORMAT} v{VERSION} file (format {meta.get('format')!r}, version {meta.get('version')!r})"
        )
    try:
        record = json.loads(meta["record"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ChainStateError(f"{path}: unreadable record ({exc})") from None
    return tensors, record


__all__ = ["ChainStateError", "load_chain_state", "save_chain_state"]
