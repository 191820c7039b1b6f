"""Helpers shared by the ``petuq`` subcommands."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import torch

from petuq_sirf.io.acquisition_folder import Acquisition, load_acquisition, save_acquisition
from petuq_sirf.io.atomic import atomic_write_text

__all__ = [
    "Acquisition",
    "add_backend_argument",
    "add_device_argument",
    "load_acquisition",
    "resolve_backend",
    "resolve_device",
    "save_acquisition",
    "write_metrics",
]


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if hasattr(value, "item") and callable(value.item):
        return _json_safe(value.item())
    return value


def write_metrics(out_dir: str | os.PathLike, metrics: dict, name: str = "metrics.json") -> Path:
    """Write ``metrics`` as JSON into ``out_dir`` atomically (NaN -> null, inf -> "inf")."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out / name, json.dumps(_json_safe(metrics), indent=2, sort_keys=False))


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="torch device: cpu, cuda, cuda:N, or auto (cuda when available)"
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; a clear error for an unavailable device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
    return dev


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """``--backend embedded|sirf|stir`` (default embedded); see :mod:`petuq_sirf.backends.registry`."""
    from petuq_sirf.backends.registry import BACKENDS, DEFAULT_BACKEND

    parser.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        choices=BACKENDS,
        help="acquisition-model backend: embedded (PyTorch, default), sirf (needs SIRF, e.g. the SyneRBI "
        "container) or stir (needs STIR's Python bindings)",
    )


def resolve_backend(name: str) -> str:
    """Canonical backend name; a one-line ``ValueError`` saying how to install it when it is missing."""
    from petuq_sirf.backends.registry import require_backend

    return require_backend(name)
