"""Loaders for the SIRF example phantoms (STIR Interfile), when a copy is available.

Looked up in ``$PETUQ_SIRF_DATA``, then ``../shared/data/sirf_data`` beside the source tree.
The package never needs them; tests and examples skip when they are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from petuq_sirf.io.interfile import read_image
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.simulation.phantoms import Phantom


def find_sirf_data() -> Path | None:
    """Folder holding ``brain/`` and ``thorax_single_slice/``, or ``None``."""
    candidates = []
    if os.environ.get("PETUQ_SIRF_DATA"):
        candidates.append(Path(os.environ["PETUQ_SIRF_DATA"]))
    here = Path(__file__).resolve()
    candidates += [p / "shared" / "data" / "sirf_data" for p in here.parents[:4]]
    for c in candidates:
        if (c / "brain" / "emission.hv").is_file():
            return c
    return None


def _resample(array: np.ndarray, source: ImageGeometry, target: ImageGeometry) -> torch.Tensor:
    """Trilinear resampling of ``array`` on ``source`` onto ``target`` (zero outside)."""
    coords = [target.centres_mm(a) for a in range(3)]
    norm = []
    for a, c in enumerate(coords):
        n = source.shape[a]
        idx = (c - source.first_voxel_mm(a)) / source.voxel_size_mm[a]
        norm.append((2 * idx + 1) / n - 1 if n > 1 else torch.zeros_like(c))
    gz, gy, gx = torch.meshgrid(*norm, indexing="ij")
    grid = torch.stack([gx, gy, gz], dim=-1)[None].float()
    src = torch.as_tensor(array, dtype=torch.float32)[None, None]
    if source.shape[0] == 1:
        src = src.expand(1, 1, 2, *source.shape[1:])
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]


def load_sirf_phantom(name: str, image: ImageGeometry | None = None, root: Path | None = None) -> Phantom:
    """Emission and attenuation (1/cm) of ``brain`` or ``thorax_single_slice`` as a :class:`Phantom`.

    The images are centred axially on the scanner; given ``image``, they are resampled onto it.
    """
    root = root or find_sirf_data()
    folder = {"brain": "brain", "thorax": "thorax_single_slice", "thorax_single_slice": "thorax_single_slice"}.get(name)
    if folder is None:
        raise ValueError(f"unknown SIRF phantom {name!r}: choose brain or thorax")
    if root is None:
        raise FileNotFoundError("SIRF example data not found: set PETUQ_SIRF_DATA to the sirf_data folder")
    em = read_image(root / folder / "emission.hv")
    mu = read_image(root / folder / "attenuation.hv")
    g = em.geometry
    centred = ImageGeometry(g.shape, g.voxel_size_mm, (0.0, g.offset_mm[1], g.offset_mm[2]))
    if image is None:
        activity = torch.as_tensor(em.array)
        mu_map = torch.as_tensor(mu.array)
        image = centred
    else:
        activity = _resample(em.array, centred, image)
        mu_map = _resample(mu.array, centred, image)
    background = activity > 0.2 * activity.max()
    return Phantom(
        activity.clamp_min(0), mu_map.clamp_min(0), image, {"background": background}, {}, name=f"sirf-{name}"
    )
