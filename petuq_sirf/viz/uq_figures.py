"""Figures of uncertainty quality: per-method panels and calibration curves (PNG)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from petuq_sirf.viz.common import central_slice, save_figure, subplots
from petuq_sirf.viz.labels import ACTIVITY_UNITS, add_colourbar, colourbar_label


def method_panels(
    rows: Mapping[str, Mapping[str, torch.Tensor]],
    path: str | os.PathLike,
    title: str | None = None,
    input_label: str = "noisy input",
    units: str = ACTIVITY_UNITS,
) -> Path:
    """One row per method: truth, noisy input, posterior mean, std and ``|error| / std``.

    ``rows[method]`` needs ``truth``, ``noisy``, ``mean``, ``std`` (2D or 3D; the middle slice is shown).
    Truth, input and mean share one grey scale; ``|error|/std`` is clipped at 3. ``input_label`` titles
    the input column (say which reconstruction it is, e.g. ``"OSEM 4 it x 8 subsets"``); colour bars are
    labelled in ``units``.
    """
    if not rows:
        raise ValueError("no methods to plot")
    names = ["truth", input_label, "posterior mean", "std", "|error|/std"]
    fig, axes = subplots(len(rows), 5, figsize=(13, 2.7 * len(rows)), squeeze=False)
    for r, (method, maps) in enumerate(rows.items()):
        truth, noisy, mean, std = (torch.from_numpy(central_slice(maps[k])) for k in ("truth", "noisy", "mean", "std"))
        vmax = float(max(truth.max(), mean.max()))
        z = (mean - truth).abs() / std.clamp_min(1e-12)
        shown = [truth, noisy, mean, std, z.clamp(max=3)]
        for c, (name, img) in enumerate(zip(names, shown)):
            ax = axes[r, c]
            if c < 3:
                im = ax.imshow(img.numpy(), cmap="gray_r", vmin=0, vmax=vmax)
            elif c == 3:
                im = ax.imshow(img.numpy(), cmap="magma", vmin=0)
            else:
                im = ax.imshow(img.numpy(), cmap="viridis", vmin=0, vmax=3)
            ax.set_title(f"{method}: {name}" if c == 0 else name, fontsize=8)
            ax.axis("off")
            add_colourbar(fig, im, ax, colourbar_label(name if c != 1 else "input", units))
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=100)


def calibration_curves(curves: Mapping[str, Mapping], path: str | os.PathLike, title: str = "calibration") -> Path:
    """Observed vs nominal coverage, one line per entry (``{name: {nominal: observed}}``; keys may be
    strings such as ``"0.90"``), with the diagonal. ``"<name> (conformal)"`` is drawn dotted in ``name``'s colour."""
    fig, ax = subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="ideal")
    colours: dict[str, str] = {}
    for name, curve in curves.items():
        nominal = [float(k) for k in curve]
        observed = [float(v) for v in curve.values()]
        order = sorted(range(len(nominal)), key=nominal.__getitem__)
        base = name.replace(" (conformal)", "")
        colour = colours.setdefault(base, f"C{len(colours) % 10}")
        ls = ":" if "conformal" in name else "-"
        ax.plot(
            [nominal[i] for i in order],
            [observed[i] for i in order],
            marker="o",
            ms=3,
            ls=ls,
            color=colour,
            label=name,
        )
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("observed coverage")
    ax.set_xlim(0.4, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def z_histograms(z: Mapping[str, torch.Tensor], path: str | os.PathLike, title: str | None = None) -> Path:
    """Histograms of z-scores per method against the N(0, 1) density (``title``: the data and settings)."""
    fig, ax = subplots(figsize=(4.6, 3.6))
    grid = torch.linspace(-5, 5, 201)
    ax.plot(grid, torch.exp(-0.5 * grid**2) / (2 * torch.pi) ** 0.5, color="k", lw=1, label="N(0, 1)")
    for name, values in z.items():
        ax.hist(values.clamp(-5, 5).numpy(), bins=80, density=True, histtype="step", label=name)
    ax.set_xlabel("z = (truth - mean) / std (unitless)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
