"""Pieces every figure uses: the Agg backend, the central slice of an image, saving a figure."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def central_slice(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """The middle transaxial slice ``(y, x)`` of an image ``(..., z, y, x)`` as float numpy (2D input as is)."""
    arr = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, float)
    while arr.ndim > 2:
        arr = arr[arr.shape[0] // 2]
    return arr


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Lay out, write as PNG and close ``fig``; returns the path."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
