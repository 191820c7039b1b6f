"""Pieces every figure uses: a figure not tied to pyplot, the central slice of an image, saving a figure.

Figures are :class:`matplotlib.figure.Figure` objects rendered by ``savefig`` alone: no global backend
is switched and pyplot's figure manager is not touched, so a notebook's backend stays as the user set it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure


def subplots(nrows: int = 1, ncols: int = 1, **kwargs) -> tuple[Figure, object]:
    """A new :class:`~matplotlib.figure.Figure` and its axes, like ``pyplot.subplots`` (``figsize`` in inches)."""
    fig = Figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(nrows, ncols, **kwargs)


def central_slice(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """The middle transaxial slice ``(y, x)`` of an image ``(..., z, y, x)`` as float numpy (2D input as is)."""
    arr = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, float)
    while arr.ndim > 2:
        arr = arr[arr.shape[0] // 2]
    return arr


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Lay out and write ``fig`` as PNG; returns the path."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path
