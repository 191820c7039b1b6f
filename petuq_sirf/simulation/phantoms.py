"""Analytic phantoms with known truth: brain-like, NEMA IEC body-like, random ellipses.

Activity is in arbitrary concentration units (background = 1 where it applies), the
attenuation map ``mu_per_cm`` in 1/cm at 511 keV. Shapes are rasterised with 2x2 in-plane
supersampling, so edges have partial-volume values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from petuq_sirf.scanner.image_geometry import ImageGeometry

MU_WATER_PER_CM = 0.096
MU_BONE_PER_CM = 0.151
MU_LUNG_PER_CM = 0.029


@dataclass
class Phantom:
    """A phantom on an image grid. Arrays are float32 tensors of shape ``image.shape`` ``(z, y, x)``.

    ``regions`` holds boolean masks (``"background"`` and one per lesion); ``contrast`` the true
    lesion-to-background activity ratio of each lesion region.
    """

    activity: torch.Tensor
    mu_per_cm: torch.Tensor
    image: ImageGeometry
    regions: dict[str, torch.Tensor] = field(default_factory=dict)
    contrast: dict[str, float] = field(default_factory=dict)
    name: str = "phantom"


def _ellipsoid(
    image: ImageGeometry,
    centre_mm: tuple[float, float, float],
    semi_axes_mm: tuple[float, float, float],
    angle_deg: float = 0.0,
    supersample: int = 2,
) -> torch.Tensor:
    """Fraction of each voxel inside an ellipsoid (rotated by ``angle_deg`` in-plane), shape ``(z, y, x)``."""
    z, y, x = image.meshgrid_mm()
    dz, dy, dx = image.voxel_size_mm
    cz, cy, cx = centre_mm
    az, ay, ax = semi_axes_mm
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    frac = torch.zeros(image.shape, dtype=torch.float64)
    zz = ((z - cz) / az) ** 2 if image.shape[0] > 1 or az < 1e6 else torch.zeros_like(z)
    for oy in offsets:
        for ox in offsets:
            yy = y + oy * dy - cy
            xx = x + ox * dx - cx
            u = c * xx + s * yy
            v = -s * xx + c * yy
            frac += ((u / ax) ** 2 + (v / ay) ** 2 + zz <= 1.0).double()
    return (frac / supersample**2).float()


def _fov_scale(image: ImageGeometry, extent_mm: float) -> float:
    """Scale factor so that an object of half-width ``extent_mm`` fits inside the image (90 %)."""
    half = 0.45 * min(image.shape[1] * image.voxel_size_mm[1], image.shape[2] * image.voxel_size_mm[2])
    return min(1.0, half / extent_mm)


def brain_phantom(image: ImageGeometry, lesions: bool = True) -> Phantom:
    """A brain-like phantom: grey-matter cortex (4), white matter (1), ventricles (0), skull.

    Lesions: a hot lesion (3) in white matter and a cold lesion (1) in the grey-matter cortex.
    ``contrast`` is the lesion activity relative to its surrounding tissue.
    """
    k = _fov_scale(image, 95.0)
    zc = image.offset_mm[0]
    head = _ellipsoid(image, (zc, 0, 0), (80 * k, 90 * k, 72 * k))
    brain = _ellipsoid(image, (zc, 0, 0), (72 * k, 82 * k, 64 * k))
    white = _ellipsoid(image, (zc, 0, 0), (55 * k, 62 * k, 45 * k))
    ventricles = _ellipsoid(image, (zc, -8 * k, -12 * k), (20 * k, 22 * k, 6 * k), 15) + _ellipsoid(
        image, (zc, -8 * k, 12 * k), (20 * k, 22 * k, 6 * k), -15
    )
    ventricles = ventricles.clamp(max=1)
    activity = 4.0 * (brain - white) + 1.0 * (white - ventricles) + 0.0 * ventricles
    mu = MU_BONE_PER_CM * (head - brain) + MU_WATER_PER_CM * brain
    regions = {"background": (white - ventricles) > 0.99}
    contrast: dict[str, float] = {}
    if lesions:
        hot = _ellipsoid(image, (zc, 30 * k, 20 * k), (9 * k, 9 * k, 9 * k))
        cold = _ellipsoid(image, (zc, 0, -58 * k), (5 * k, 5 * k, 5 * k))
        activity = activity * (1 - hot) + 3.0 * hot
        activity = activity * (1 - cold) + 1.0 * cold
        regions["hot_lesion"] = hot > 0.99
        regions["cold_lesion"] = cold > 0.99
        regions["background"] &= ~(_ellipsoid(image, (zc, 30 * k, 20 * k), (15 * k,) * 3) > 0)
        contrast = {"hot_lesion": 3.0, "cold_lesion": 0.25}
    return Phantom(activity.float(), mu.float(), image, regions, contrast, name="brain")


NEMA_SPHERE_DIAMETERS_MM = (10.0, 13.0, 17.0, 22.0, 28.0, 37.0)


def nema_iec_phantom(image: ImageGeometry, hot_ratio: float = 4.0, cold_largest: int = 2) -> Phantom:
    """NEMA IEC body-like phantom: body (activity 1), lung insert (0), six spheres on a 57.2 mm circle.

    The spheres are hot (``hot_ratio``) except the ``cold_largest`` largest, which are cold (0),
    as in NEMA NU 2. Scaled down to fit small test scanners.
    """
    k = _fov_scale(image, 150.0)
    zc = image.offset_mm[0]
    body = (
        _ellipsoid(image, (zc, 20 * k, 0), (90 * k, 95 * k, 150 * k))
        + _ellipsoid(image, (zc, -25 * k, 0), (90 * k, 90 * k, 110 * k))
    ).clamp(max=1)
    lung = _ellipsoid(image, (zc, 0, 0), (90 * k, 25 * k, 25 * k))
    activity = body - lung
    mu = MU_WATER_PER_CM * (body - lung) + MU_LUNG_PER_CM * lung
    regions: dict[str, torch.Tensor] = {}
    contrast: dict[str, float] = {}
    any_sphere = torch.zeros(image.shape)
    for i, diameter in enumerate(NEMA_SPHERE_DIAMETERS_MM):
        angle = math.radians(60 * i)
        centre = (zc, 57.2 * k * math.sin(angle), 57.2 * k * math.cos(angle))
        r = diameter / 2 * max(k, 0.75)
        sphere = _ellipsoid(image, centre, (r, r, r))
        value = 0.0 if i >= len(NEMA_SPHERE_DIAMETERS_MM) - cold_largest else hot_ratio
        activity = activity * (1 - sphere) + value * sphere
        name = f"{'cold' if value == 0 else 'hot'}_sphere_{int(diameter)}mm"
        regions[name] = sphere > 0.99
        contrast[name] = value
        any_sphere = any_sphere + _ellipsoid(image, centre, (r + 8 * k,) * 3)
    regions["background"] = (body - lung > 0.99) & (any_sphere == 0) & (lung == 0)
    return Phantom(activity.float(), mu.float(), image, regions, contrast, name="nema_iec")


def random_ellipses_phantom(
    image: ImageGeometry, rng: np.random.Generator, num_ellipses: int = 8, lesion_probability: float = 0.5
) -> Phantom:
    """A random body ellipse with ``num_ellipses`` inner ellipses of random activity (training data).

    With probability ``lesion_probability`` one small hot lesion is added (region ``"lesion"``).
    """
    k = _fov_scale(image, 120.0)
    zc = image.offset_mm[0]
    body = _ellipsoid(
        image, (zc, 0, 0), (200.0, rng.uniform(70, 110) * k, rng.uniform(90, 120) * k), rng.uniform(-20, 20)
    )
    activity = body * rng.uniform(0.8, 1.2)
    for _ in range(num_ellipses):
        centre = (zc + rng.uniform(-10, 10), rng.uniform(-50, 50) * k, rng.uniform(-60, 60) * k)
        axes = (rng.uniform(10, 40), rng.uniform(5, 35) * k, rng.uniform(5, 35) * k)
        e = _ellipsoid(image, centre, axes, rng.uniform(0, 180)) * body
        activity = activity * (1 - e) + rng.uniform(0.0, 3.0) * e
    regions = {"background": body > 0.99}
    contrast: dict[str, float] = {}
    if rng.uniform() < lesion_probability:
        r = rng.uniform(4, 9) * max(k, 0.75)
        centre = (zc, rng.uniform(-40, 40) * k, rng.uniform(-50, 50) * k)
        lesion = _ellipsoid(image, centre, (r, r, r)) * body
        value = rng.uniform(3.0, 6.0)
        activity = activity * (1 - lesion) + value * lesion
        regions["lesion"] = lesion > 0.99
    mu = MU_WATER_PER_CM * body
    return Phantom(activity.float(), mu.float(), image, regions, contrast, name="random_ellipses")


def make_phantom(name: str, image: ImageGeometry, seed: int = 0) -> Phantom:
    """A phantom by name: ``brain``, ``nema``, ``ellipses``, ``sirf-brain`` / ``sirf-thorax`` (shared data), or
    ``family:<family>:<split>:<index>``: phantom ``index`` of a split (``train``, ``calibration``, ``test``) of
    an anatomical family (``simulation.phantom_families``; e.g. ``family:thorax:calibration:0``)."""
    key = name.lower()
    if key.startswith("family:"):
        from petuq_sirf.simulation.phantom_families import family_phantom, seeds

        parts = key.split(":")
        if len(parts) != 4 or not parts[3].isdigit():
            raise ValueError(f"family phantom {name!r}: use family:<family>:<split>:<index>, e.g. family:thorax:test:0")
        _, family, split, index = parts
        return family_phantom(family, image, seeds(split, 1, start=int(index))[0])
    if key == "brain":
        return brain_phantom(image)
    if key in ("nema", "nema_iec", "iec"):
        return nema_iec_phantom(image)
    if key in ("ellipses", "random_ellipses"):
        return random_ellipses_phantom(image, np.random.default_rng(seed))
    if key in ("sirf-brain", "sirf-thorax"):
        from petuq_sirf.simulation.sirf_data import load_sirf_phantom

        return load_sirf_phantom(key.split("-")[1], image)
    raise ValueError(
        f"unknown phantom {name!r}; choose brain, nema, ellipses, sirf-brain, sirf-thorax or "
        "family:<family>:<split>:<index>"
    )
