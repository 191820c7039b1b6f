"""Atomic epoch checkpoints, so that an interrupted training run resumes where it stopped.

A checkpoint holds everything the next epoch depends on: network, optimiser and learning-rate scheduler
state, the minibatch generator and the global torch RNG (dropout), the loss history, and a fingerprint of
the settings and training data. It is written to a temporary file, flushed and renamed into place after
every epoch, so an interruption (Ctrl-C, a killed job) leaves the previous complete checkpoint. Resuming
from it reproduces the uninterrupted run exactly (same weights for a fixed seed). A checkpoint written for
other settings or other data is refused (:class:`ResumeError`) rather than silently mixed in.

Files are read with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only.
The file mechanism is :mod:`petuq_sirf.io.resumable`, shared with the Langevin samplers.
"""

from __future__ import annotations

import os

from petuq_sirf.io.resumable import ResumableCheckpoint, ResumeError, tensor_digest

FORMAT = "petuq-epoch-checkpoint"


class EpochCheckpoint(ResumableCheckpoint):
    """The checkpoint file ``path`` of one training loop (one network)."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(
            path,
            FORMAT,
            "training checkpoint",
            "holds an interrupted training run with other settings or training data: "
            "re-run with the same settings to resume, or --restart to discard it",
        )


__all__ = ["EpochCheckpoint", "ResumeError", "tensor_digest"]
