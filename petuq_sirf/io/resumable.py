"""Atomic checkpoints of long runs, so that an interrupted run resumes where it stopped.

One file per run holds everything the rest of the run depends on (a dict of tensors, numbers, strings, lists),
plus its format and a fingerprint of the settings and data. It is written with
:func:`~petuq_sirf.io.atomic.atomic_write` (temporary file, fsync, rename), so an interruption (Ctrl-C, a killed
job) leaves the previous complete checkpoint. A checkpoint of another run (other fingerprint, other format) is
refused in one line (:class:`ResumeError`) rather than silently mixed in. Files are read with
``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only.

Used by the training loops (:mod:`petuq_sirf.bayes.resume`) and the Langevin samplers
(:func:`petuq_sirf.inference.langevin.langevin_sample`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from petuq_sirf.io.atomic import atomic_write, json_safe

VERSION = 1


class ResumeError(ValueError):
    """A checkpoint that cannot be resumed (other settings or data, damaged file)."""


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' bytes (shapes and dtypes included)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class ResumableCheckpoint:
    """The checkpoint file ``path`` of one run.

    ``fmt``: the format name stored in (and required of) the file; ``label``: what the file is, for the
    unreadable-file message; ``mismatch``: the rest of the message for a checkpoint of another run (after
    ``"<path> "``), saying what to do.
    """

    def __init__(self, path: str | os.PathLike, fmt: str, label: str, mismatch: str) -> None:
        self.path = Path(path)
        self.fmt, self.label, self.mismatch = fmt, label, mismatch

    @staticmethod
    def _key(fingerprint: dict) -> str:
        return json.dumps(json_safe(fingerprint), sort_keys=True)

    def load(self, fingerprint: dict) -> dict | None:
        """The saved state, or ``None`` when there is none; :class:`ResumeError` when it does not match."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged file of any kind
            raise ResumeError(
                f"{self.label} {self.path} cannot be read ({type(exc).__name__}): delete it to start again"
            ) from exc
        if not isinstance(state, dict) or state.get("format") != self.fmt or state.get("version") != VERSION:
            raise ResumeError(f"{self.path} is not a {self.fmt} file of version {VERSION}: delete it to start again")
        if state.get("fingerprint") != self._key(fingerprint):
            raise ResumeError(f"{self.path} {self.mismatch}")
        return state

    def save(self, fingerprint: dict, state: dict) -> None:
        """Write ``state`` (plus format and fingerprint) atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {**state, "format": self.fmt, "version": VERSION, "fingerprint": self._key(fingerprint)}
        atomic_write(self.path, lambda f: torch.save(payload, f))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


__all__ = ["ResumableCheckpoint", "ResumeError", "tensor_digest"]
