"""Panels of image slices."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from petuq_sirf.viz.common import central_slice, save_figure, subplots
from petuq_sirf.viz.labels import ACTIVITY_UNITS, add_colourbar, colourbar_label


def image_panel(
    images: dict[str, torch.Tensor],
    path: str | os.PathLike,
    shared_scale: tuple[str, ...] = (),
    title: str | None = None,
    units: str = ACTIVITY_UNITS,
) -> Path:
    """One row of central slices with a colour bar each; images named in ``shared_scale`` share limits.

    The names are the panel titles (give the method's settings there, see
    :func:`~petuq_sirf.viz.labels.reconstruction_title`); colour bars are labelled in ``units``.
    """
    n = len(images)
    fig, axes = subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    vmax_shared = max((float(central_slice(images[k]).max()) for k in shared_scale if k in images), default=None)
    for ax, (name, img) in zip(axes[0], images.items()):
        sl = central_slice(img)
        vmax = vmax_shared if name in shared_scale else None
        im = ax.imshow(sl, cmap="gray_r" if "std" not in name else "magma", vmin=0 if vmax else None, vmax=vmax)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
        add_colourbar(fig, im, ax, colourbar_label(name, units))
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
