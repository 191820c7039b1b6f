"""Panels of image slices."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from petuq_sirf.viz.common import central_slice, save_figure, subplots


def image_panel(
    images: dict[str, torch.Tensor],
    path: str | os.PathLike,
    shared_scale: tuple[str, ...] = (),
    title: str | None = None,
) -> Path:
    """One row of central slices with a colour bar each; images named in ``shared_scale`` share limits."""
    n = len(images)
    fig, axes = subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    vmax_shared = max((float(central_slice(images[k]).max()) for k in shared_scale if k in images), default=None)
    for ax, (name, img) in zip(axes[0], images.items()):
        sl = central_slice(img)
        vmax = vmax_shared if name in shared_scale else None
        im = ax.imshow(sl, cmap="gray_r" if "std" not in name else "magma", vmin=0 if vmax else None, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
