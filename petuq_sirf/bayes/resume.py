"""Atomic epoch checkpoints, so that an interrupted training run resumes where it stopped.

A checkpoint holds everything the next epoch depends on: network, optimiser and learning-rate scheduler
state, the minibatch generator and the global torch RNG (dropout), the loss history, and a fingerprint of
the settings and training data. It is written to a temporary file, flushed and renamed into place after
every epoch, so an interruption (Ctrl-C, a killed job) leaves the previous complete checkpoint. Resuming
from it reproduces the uninterrupted run exactly (same weights for a fixed seed). A checkpoint written for
other settings or other data is refused (:class:`ResumeError`) rather than silently mixed in.

Files are read with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

FORMAT = "petuq-epoch-checkpoint"
VERSION = 1


class ResumeError(ValueError):
    """A training checkpoint that cannot be resumed (other settings or data, damaged file)."""


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' bytes (shapes and dtypes included)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class EpochCheckpoint:
    """The checkpoint file ``path`` of one training loop (one network)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def load(self, fingerprint: dict) -> dict | None:
        """The saved state, or ``None`` when there is none; :class:`ResumeError` when it does not match."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged file of any kind
            raise ResumeError(
                f"training checkpoint {self.path} cannot be read ({type(exc).__name__}): delete it to start again"
            ) from exc
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != VERSION:
            raise ResumeError(f"{self.path} is not a {FORMAT} file of version {VERSION}: delete it to start again")
        wanted = json.dumps(fingerprint, sort_keys=True)
        if state.get("fingerprint") != wanted:
            raise ResumeError(
                f"{self.path} holds an interrupted training run with other settings or training data: "
                "re-run with the same settings to resume, or --restart to discard it"
            )
        return state

    def save(self, fingerprint: dict, state: dict) -> None:
        """Write ``state`` (plus format and fingerprint) atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            **state,
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": json.dumps(fingerprint, sort_keys=True),
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


__all__ = ["EpochCheckpoint", "ResumeError", "tensor_digest"]
