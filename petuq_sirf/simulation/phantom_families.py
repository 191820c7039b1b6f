"""Procedural anatomical phantom families with seeds: brain, thorax/abdomen, random ellipses, random texture.

Each family draws a phantom from a seed: random anatomy (sizes, activity levels), a random smooth
deformation of the whole anatomy, and random lesions (hot and cold, 4-30 mm diameter, contrast
1.5-8 : 1 against the surrounding tissue, centred anywhere in tissue). Activity is in arbitrary
concentration units (soft tissue / white matter about 1), the mu-map in 1/cm at 511 keV
(:data:`MU_PER_CM`). 2D images (``nz == 1``) are an axial slice at a random level of the 3D anatomy;
3D images sample the same anatomy along z. Shapes are painted on a 2x2 in-plane supersampled grid and
averaged, so edges have partial-volume values.

Splits: :data:`SEED_RANGES` gives disjoint seed ranges for ``train``, ``calibration`` and ``test``; a
phantom's seed tells its split (:func:`split_of`), and :func:`seeds` hands out seeds of a split.
:data:`OUT_OF_FAMILY` names the families networks may be trained / calibrated on and the family held
out for the out-of-family test. The SIRF images in ``../shared/data`` are never used here.

Regions (boolean ``(z, y, x)`` masks) of every phantom: ``object`` (inside the body outline),
``lesions`` (union of the lesion masks), ``lesion_<i>`` (voxels at least half inside lesion ``i``, at
least the voxel at its centre), ``edges`` (object voxels where the truth changes by more than
:data:`EDGE_THRESHOLD` of the median object activity to a neighbour) and
``background`` (object without lesions and edges, dilated by one voxel). ``contrast[lesion_<i>]`` is
the lesion-to-surrounding activity ratio (> 1 hot, < 1 cold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.simulation.phantoms import Phantom

#: Linear attenuation coefficients at 511 keV in 1/cm.
MU_PER_CM: dict[str, float] = {
    "air": 0.0,
    "lung": 0.030,  # inflated lung, density ~0.3 g/cm^3 (drawn in 0.025-0.035)
    "fat": 0.090,
    "soft_tissue": 0.096,  # water / brain / muscle / liver / blood
    "spine_bone": 0.151,  # vertebral bone (drawn in 0.150-0.160)
    "cortical_bone": 0.160,  # skull, ribs (drawn in 0.150-0.170)
}

#: Disjoint seed ranges per split (half-open). A seed belongs to exactly one split.
SEED_RANGES: dict[str, tuple[int, int]] = {
    "train": (0, 100_000),
    "calibration": (100_000, 200_000),
    "test": (200_000, 300_000),
}

FAMILIES: tuple[str, ...] = ("brain", "thorax", "ellipses", "texture")


def check_families(names) -> None:
    """One-line error naming the families of ``names`` that are not in :data:`FAMILIES`."""
    bad = [n for n in names if n not in FAMILIES]
    if bad:
        raise ValueError(f"unknown phantom families {bad}; choose from {', '.join(FAMILIES)}")


#: Out-of-family protocol: learn (train + calibrate) on ``in_family``, test also on ``held_out``.
OUT_OF_FAMILY: dict[str, tuple[str, ...]] = {"in_family": ("thorax", "ellipses"), "held_out": ("brain",)}

LESION_DIAMETER_MM = (4.0, 30.0)
LESION_CONTRAST = (1.5, 8.0)
EDGE_THRESHOLD = 0.3
_SUPERSAMPLE = 2


def split_of(seed: int) -> str:
    """The split (``train``, ``calibration``, ``test``) a phantom seed belongs to."""
    for name, (lo, hi) in SEED_RANGES.items():
        if lo <= seed < hi:
            return name
    raise ValueError(f"seed {seed} is in no split; ranges: {SEED_RANGES}")


def seeds(split: str, num: int, start: int = 0) -> list[int]:
    """``num`` phantom seeds of ``split``, from its ``start``-th seed on (deterministic, disjoint across splits)."""
    if split not in SEED_RANGES:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SEED_RANGES)}")
    lo, hi = SEED_RANGES[split]
    if num < 0 or start < 0 or lo + start + num > hi:
        raise ValueError(f"cannot take {num} seeds from {start} in split {split!r} ({hi - lo} seeds)")
    return list(range(lo + start, lo + start + num))


@dataclass(frozen=True)
class Lesion:
    """A spherical lesion: centre ``(z, y, x)`` mm, diameter mm, activity ratio to its surroundings."""

    centre_mm: tuple[float, float, float]
    diameter_mm: float
    contrast: float
    background_activity: float

    @property
    def hot(self) -> bool:
        return self.contrast > 1


@dataclass(frozen=True)
class LesionSpec:
    """How lesions are drawn: a number in ``count`` (inclusive), diameters (mm) and contrasts (ratio to the
    surroundings, log-uniform in ``contrast``; cold lesions get ``1 / ratio``), ``hot_fraction`` of them hot."""

    count: tuple[int, int] = (1, 3)
    diameter_mm: tuple[float, float] = LESION_DIAMETER_MM
    contrast: tuple[float, float] = LESION_CONTRAST
    hot_fraction: float = 0.7

    def __post_init__(self) -> None:
        if not 0 <= self.count[0] <= self.count[1]:
            raise ValueError(f"lesion count range must be 0 <= lo <= hi, got {self.count}")
        if not 0 < self.diameter_mm[0] <= self.diameter_mm[1]:
            raise ValueError(f"lesion diameters must be 0 < lo <= hi mm, got {self.diameter_mm}")
        if not 1 < self.contrast[0] <= self.contrast[1]:
            raise ValueError(f"lesion contrast must be 1 < lo <= hi, got {self.contrast}")
        if not 0 <= self.hot_fraction <= 1:
            raise ValueError(f"hot_fraction must be in [0, 1], got {self.hot_fraction}")


@dataclass
class FamilyPhantom(Phantom):
    """A :class:`~petuq_sirf.simulation.phantoms.Phantom` with its family, seed, split and lesions."""

    family: str = ""
    seed: int = 0
    split: str = ""
    lesions: list[Lesion] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- grid helpers
class _Grid:
    """Supersampled voxel-centre coordinates ``(z, y, x)`` in mm, warped by an affine map and a smooth field."""

    def __init__(self, image: ImageGeometry, rng: np.random.Generator, z_level_mm: float, deform_mm: float):
        s = _SUPERSAMPLE
        nz, ny, nx = image.shape
        dz, dy, dx = image.voxel_size_mm
        z = image.centres_mm(0)
        y = (torch.arange(ny * s, dtype=torch.float64) - (ny * s - 1) / 2) * dy / s + image.offset_mm[1]
        x = (torch.arange(nx * s, dtype=torch.float64) - (nx * s - 1) / 2) * dx / s + image.offset_mm[2]
        zz, yy, xx = torch.meshgrid(z - image.offset_mm[0] + z_level_mm, y, x, indexing="ij")
        self.image = image
        # random affine: in-plane rotation, anisotropic scale, translation
        angle = math.radians(rng.uniform(-10, 10))
        sy, sx = rng.uniform(0.92, 1.08, size=2)
        ty, tx = rng.uniform(-5, 5, size=2)
        c, sn = math.cos(angle), math.sin(angle)
        yr = (c * (yy - ty) - sn * (xx - tx)) / sy
        xr = (sn * (yy - ty) + c * (xx - tx)) / sx
        # smooth random displacement: a few long-wavelength sinusoids (80-200 mm), deform_mm amplitude
        dyv = torch.zeros_like(yr)
        dxv = torch.zeros_like(xr)
        for _ in range(4):
            wl = rng.uniform(80, 200)
            theta = rng.uniform(0, 2 * math.pi)
            phase = rng.uniform(0, 2 * math.pi)
            arg = 2 * math.pi * (math.cos(theta) * yr + math.sin(theta) * xr + 0.5 * zz) / wl + phase
            dyv += rng.uniform(-1, 1) * deform_mm / 2 * torch.sin(arg)
            dxv += rng.uniform(-1, 1) * deform_mm / 2 * torch.cos(arg)
        self.z, self.y, self.x = zz, yr + dyv, xr + dxv
        self.raw = (zz, yy, xx)  # unwarped coordinates (lesions are placed in scanner space)

    def pool(self, fine: torch.Tensor) -> torch.Tensor:
        """Average ``(z, y s, x s)`` to the voxel grid ``(z, y, x)``."""
        return F.avg_pool2d(fine[:, None].float(), _SUPERSAMPLE)[:, 0]

    def ellipse(self, cy, cx, ay, ax, angle_deg=0.0, cz=0.0, az=1e9, power=2.0) -> torch.Tensor:
        """Boolean (super)ellipsoid on the warped fine grid (``power`` 2: ellipse, larger: boxier)."""
        c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
        u = c * (self.x - cx) + s * (self.y - cy)
        v = -s * (self.x - cx) + c * (self.y - cy)
        return (u / ax).abs() ** power + (v / ay).abs() ** power + ((self.z - cz) / az).abs() ** 2 <= 1.0


def _smooth_texture(grid: _Grid, rng: np.random.Generator, amplitude: float) -> torch.Tensor:
    """``1 + amplitude * smooth field`` in about [1 - amplitude, 1 + amplitude] (wavelengths 30-80 mm)."""
    field_ = torch.zeros_like(grid.y)
    for _ in range(5):
        wl = rng.uniform(30, 80)
        theta = rng.uniform(0, 2 * math.pi)
        arg = 2 * math.pi * (math.cos(theta) * grid.y + math.sin(theta) * grid.x + 0.3 * grid.z) / wl
        field_ += torch.sin(arg + rng.uniform(0, 2 * math.pi))
    return 1.0 + amplitude * field_ / math.sqrt(5 / 2) / 2


def _fov_scale(image: ImageGeometry, extent_mm: float) -> float:
    half = 0.45 * min(image.shape[1] * image.voxel_size_mm[1], image.shape[2] * image.voxel_size_mm[2])
    return min(1.0, half / extent_mm)


# ----------------------------------------------------------------------------------------- anatomies
def _brain(grid: _Grid, rng: np.random.Generator, k: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Brain at the level of the basal ganglia: scalp, skull, CSF, grey-matter ribbon, white matter,
    lateral ventricles, caudate, putamen, thalamus. Returns fine activity, mu and body mask."""
    a_head = rng.uniform(0.92, 1.08) * np.array([80.0, 92.0, 74.0]) * k  # z, y, x semi-axes
    head = grid.ellipse(0, 0, a_head[1], a_head[2], cz=0, az=a_head[0])
    skull_out = grid.ellipse(0, 0, a_head[1] - 5 * k, a_head[2] - 5 * k, cz=0, az=a_head[0] - 5 * k)
    skull_in = grid.ellipse(0, 0, a_head[1] - 11 * k, a_head[2] - 11 * k, cz=0, az=a_head[0] - 11 * k)
    ay, ax, az = a_head[1] - 13 * k, a_head[2] - 13 * k, a_head[0] - 13 * k
    brain = grid.ellipse(0, 0, ay, ax, cz=0, az=az)
    # grey-matter ribbon: inner boundary at normalised radius 0.84-0.92 modulated by gyral folding
    rho = torch.sqrt((grid.y / ay) ** 2 + (grid.x / ax) ** 2 + (grid.z / az) ** 2)
    theta = torch.atan2(grid.y, grid.x)
    fold = torch.zeros_like(rho)
    for n in (7, 11, 17):
        fold += rng.uniform(0.5, 1.0) * torch.sin(n * theta + rng.uniform(0, 2 * math.pi) + 0.05 * n * grid.z / k)
    fold = fold / 3
    white = brain & (rho < 0.86 + 0.05 * fold)
    sulci = brain & ~white & (fold < -0.45) & (rho > 0.93)  # CSF in the deepest sulci
    vent = grid.ellipse(-8 * k, -9 * k, 24 * k, 7 * k, 12, cz=5 * k, az=18 * k) | grid.ellipse(
        -8 * k, 9 * k, 24 * k, 7 * k, -12, cz=5 * k, az=18 * k
    )
    caudate = grid.ellipse(-14 * k, -15 * k, 9 * k, 5 * k, 20, cz=2 * k, az=14 * k) | grid.ellipse(
        -14 * k, 15 * k, 9 * k, 5 * k, -20, cz=2 * k, az=14 * k
    )
    putamen = grid.ellipse(0, -27 * k, 14 * k, 6 * k, 10, cz=-2 * k, az=14 * k) | grid.ellipse(
        0, 27 * k, 14 * k, 6 * k, -10, cz=-2 * k, az=14 * k
    )
    thalamus = grid.ellipse(14 * k, -9 * k, 10 * k, 8 * k, 0, cz=0, az=12 * k) | grid.ellipse(
        14 * k, 9 * k, 10 * k, 8 * k, 0, cz=0, az=12 * k
    )
    wm, gm = rng.uniform(0.9, 1.1), rng.uniform(2.5, 4.0)
    activity = torch.zeros_like(grid.y)
    mu = torch.zeros_like(grid.y)
    mu[head] = MU_PER_CM["soft_tissue"]
    mu[skull_out & ~skull_in] = rng.uniform(0.150, 0.170)
    activity[head] = rng.uniform(0.3, 0.6)  # scalp
    activity[skull_out & ~skull_in] = rng.uniform(0.1, 0.3)  # bone
    activity[skull_in] = 0.05  # CSF between skull and brain
    activity[brain] = gm
    activity[sulci] = 0.05
    activity[white] = wm
    activity[vent] = 0.05
    activity[caudate] = gm * rng.uniform(0.85, 1.1)
    activity[putamen] = gm * rng.uniform(0.9, 1.15)
    activity[thalamus] = gm * rng.uniform(0.75, 0.95)
    activity[brain] *= _smooth_texture(grid, rng, 0.08)[brain]
    return activity, mu, head


def _thorax(grid: _Grid, rng: np.random.Generator, k: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower thorax / upper abdomen: body with fat layer, lungs, heart (myocardium, blood pool), liver dome,
    vertebra with spinal canal, aorta, ribs. The axial level decides how much lung / liver a slice shows."""
    by, bx = rng.uniform(95, 115) * k, rng.uniform(150, 175) * k
    body = grid.ellipse(0, 0, by, bx, power=2.3)
    inner = grid.ellipse(0, 0, by - 8 * k, bx - 10 * k, power=2.3)
    # level: z in mm from the liver dome (positive = towards the head); lungs shrink and liver grows below it
    level = grid.z
    lung_scale = torch.clamp(0.6 + level / (60 * k), 0.0, 1.0)
    liver_scale = torch.clamp(0.75 - level / (60 * k), 0.0, 1.0)
    ly, lx = 62 * k, 48 * k
    lung_r = ((grid.y + 5 * k) / (ly * lung_scale.clamp_min(1e-3))) ** 2 + (
        (grid.x + 62 * k) / (lx * lung_scale.clamp_min(1e-3))
    ) ** 2 <= 1
    lung_l = ((grid.y + 5 * k) / (ly * lung_scale.clamp_min(1e-3))) ** 2 + (
        (grid.x - 66 * k) / (0.9 * lx * lung_scale.clamp_min(1e-3))
    ) ** 2 <= 1
    lungs = (lung_r | lung_l) & inner & (lung_scale > 0.05)
    heart_present = torch.clamp(1.0 - (level - 10 * k).abs() / (50 * k), 0.0, 1.0)
    hr = 38 * k * heart_present.clamp_min(1e-3)
    hy, hx = -22 * k, 22 * k
    heart_d = torch.sqrt(((grid.y - hy) / 1.0) ** 2 + ((grid.x - hx) / 1.15) ** 2)
    heart = (heart_d <= hr) & (heart_present > 0.1)
    blood = (heart_d <= hr - 10 * k) & heart
    liver_rad_y, liver_rad_x = 70 * k * liver_scale.clamp_min(1e-3), 80 * k * liver_scale.clamp_min(1e-3)
    liver = (((grid.y + 5 * k) / liver_rad_y) ** 2 + ((grid.x + 40 * k) / liver_rad_x) ** 2 <= 1) & inner
    liver &= liver_scale > 0.05
    vert = grid.ellipse(by - 35 * k, 0, 16 * k, 17 * k)
    canal = grid.ellipse(by - 17 * k, 0, 6 * k, 6 * k)
    process = grid.ellipse(by - 12 * k, 0, 10 * k, 4 * k)
    aorta = grid.ellipse(by - 60 * k, 18 * k, 11 * k, 11 * k)
    ribs = torch.zeros_like(body)
    for ang in np.linspace(0.35, 2.8, 5):
        for side in (-1, 1):
            cy = -math.cos(ang) * (by - 14 * k) * 0.95
            cx = side * math.sin(ang) * (bx - 14 * k) * 0.95
            ribs |= grid.ellipse(cy, cx, 5 * k, 7 * k)
    tissue_act = rng.uniform(0.8, 1.2)
    activity = torch.zeros_like(grid.y)
    mu = torch.zeros_like(grid.y)
    mu[body] = MU_PER_CM["fat"]
    activity[body] = rng.uniform(0.2, 0.4)  # subcutaneous fat
    mu[inner] = MU_PER_CM["soft_tissue"]
    activity[inner] = tissue_act
    activity[inner] *= _smooth_texture(grid, rng, 0.12)[inner]
    mu_lung = rng.uniform(0.025, 0.035)
    mu[lungs] = mu_lung
    activity[lungs] = rng.uniform(0.12, 0.3)
    mu[liver] = MU_PER_CM["soft_tissue"]
    activity[liver] = rng.uniform(1.5, 2.5)
    mu[heart] = MU_PER_CM["soft_tissue"]
    activity[heart] = rng.uniform(2.0, 8.0)  # myocardium (FDG uptake varies a lot)
    activity[blood] = rng.uniform(1.2, 1.8)
    mu[aorta] = MU_PER_CM["soft_tissue"]
    activity[aorta] = activity[blood].mean() if bool(blood.any()) else 1.5
    bone = (vert | process) & ~canal
    mu[bone] = rng.uniform(0.150, 0.160)
    activity[bone] = rng.uniform(0.9, 1.4)  # red marrow
    mu[canal] = MU_PER_CM["soft_tissue"]
    activity[canal] = 0.3
    rib_bone = ribs & body & ~lungs
    mu[rib_bone] = rng.uniform(0.150, 0.170)
    activity[rib_bone] = rng.uniform(0.6, 1.0)
    return activity, mu, body


def _random_ellipse(
    grid: _Grid,
    rng: np.random.Generator,
    body: torch.Tensor,
    centre_mm: tuple[float, float],
    semi_axes_mm: tuple[float, float],
    z_mm: tuple[tuple[float, float], tuple[float, float]] | None = None,
) -> torch.Tensor:
    """A random ellipse inside ``body``: centre uniform in ``+/- centre_mm`` ``(y, x)``, both semi-axes uniform
    in ``semi_axes_mm``, any angle; ``z_mm`` = (centre range, semi-axis range) makes it an ellipsoid along z."""
    cy, cx = rng.uniform(-centre_mm[0], centre_mm[0]), rng.uniform(-centre_mm[1], centre_mm[1])
    ay, ax = rng.uniform(*semi_axes_mm), rng.uniform(*semi_axes_mm)
    angle = rng.uniform(0, 180)
    z = {} if z_mm is None else {"cz": rng.uniform(*z_mm[0]), "az": rng.uniform(*z_mm[1])}
    return grid.ellipse(cy, cx, ay, ax, angle, **z) & body


def _ellipses(grid: _Grid, rng: np.random.Generator, k: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random-ellipses training family (water body, inner ellipses of random activity)."""
    body = grid.ellipse(0, 0, rng.uniform(70, 110) * k, rng.uniform(90, 120) * k, rng.uniform(-20, 20))
    activity = torch.zeros_like(grid.y)
    activity[body] = rng.uniform(0.8, 1.2)
    for _ in range(8):
        e = _random_ellipse(grid, rng, body, (50 * k, 60 * k), (5 * k, 35 * k), z_mm=((-10, 10), (10, 40)))
        activity[e] = rng.uniform(0.0, 3.0)
    mu = torch.where(body, torch.tensor(MU_PER_CM["soft_tissue"], dtype=grid.y.dtype), torch.zeros_like(grid.y))
    return activity, mu, body


def _random_field(grid: _Grid, rng: np.random.Generator, wavelengths_mm: tuple[float, float], n: int) -> torch.Tensor:
    """Zero-mean, unit-variance random field: ``n`` plane waves with log-uniform wavelengths (mm)."""
    out = torch.zeros_like(grid.y)
    lo, hi = math.log(wavelengths_mm[0]), math.log(wavelengths_mm[1])
    for _ in range(n):
        wl = math.exp(rng.uniform(lo, hi))
        theta = rng.uniform(0, 2 * math.pi)
        tilt = rng.uniform(-0.5, 0.5)  # variation along z for 3D images
        arg = 2 * math.pi * (math.cos(theta) * grid.y + math.sin(theta) * grid.x + tilt * grid.z) / wl
        out += torch.sin(arg + rng.uniform(0, 2 * math.pi))
    return out * math.sqrt(2 / n)


def _texture(grid: _Grid, rng: np.random.Generator, k: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generic random texture (no organ model): a superelliptic body split into 3-5 activity levels by
    thresholds of a multi-scale random field (wavelengths 40-160 mm), 1-3 thin winding bands (2-8 mm wide, the
    level sets of a second field) of raised or lowered uptake, 0-3 near-empty cavities, a smooth 15 %
    modulation; mu: soft tissue, with the lowest level drawn as lung-like (0.025-0.035 /cm) or a random
    bone blob / shell under the outline (0.15-0.17 /cm) in some phantoms."""
    by, bx = rng.uniform(65, 105) * k, rng.uniform(75, 120) * k
    angle, power = rng.uniform(-30, 30), rng.uniform(2.0, 3.0)
    body = grid.ellipse(0, 0, by, bx, angle, power=power)
    activity = torch.zeros_like(grid.y)
    mu = torch.zeros_like(grid.y)
    mu[body] = MU_PER_CM["soft_tissue"]
    levels = int(rng.integers(3, 6))
    field_ = _random_field(grid, rng, (40 * k, 160 * k), 10)
    cuts = np.sort(rng.normal(0.0, 0.8, size=levels - 1))
    values = np.exp(rng.uniform(math.log(0.15), math.log(3.0), size=levels))
    label = torch.bucketize(field_, torch.as_tensor(cuts, dtype=field_.dtype))
    activity[body] = torch.as_tensor(values, dtype=activity.dtype)[label][body]
    if rng.uniform() < 0.3:  # the lowest level is air-filled (lung-like)
        low = body & (label == 0)
        mu[low] = rng.uniform(0.025, 0.035)
    for _ in range(int(rng.integers(1, 4))):
        band_field = _random_field(grid, rng, (50 * k, 150 * k), 6)
        width = rng.uniform(2.0, 8.0) * k
        # |g - c| < w / 2 with g scaled to about mm: the band is roughly ``width`` mm wide
        band = body & ((band_field - rng.uniform(-0.5, 0.5)).abs() * 20 * k < width / 2)
        activity[band] = activity[band] * float(np.exp(rng.uniform(math.log(0.3), math.log(3.0))))
    for _ in range(int(rng.integers(0, 4))):
        cav = _random_ellipse(grid, rng, body, (0.6 * by, 0.6 * bx), (5 * k, 20 * k))
        activity[cav] = rng.uniform(0.02, 0.1)
    if rng.uniform() < 0.5:  # bone: a shell just inside the outline or a blob
        if rng.uniform() < 0.5:
            t = rng.uniform(4, 9) * k
            bone = body & ~grid.ellipse(0, 0, by - t, bx - t, angle, power=power)
        else:
            bone = body & grid.ellipse(
                rng.uniform(-0.5, 0.5) * by, rng.uniform(-0.5, 0.5) * bx, rng.uniform(8, 20) * k, rng.uniform(8, 20) * k
            )
        mu[bone] = rng.uniform(0.150, 0.170)
        activity[bone] = rng.uniform(0.1, 1.0)
    activity[body] *= _smooth_texture(grid, rng, 0.15)[body]
    return activity, mu, body


_ANATOMY = {"brain": (_brain, 95.0, (-15.0, 20.0), 4.0), "thorax": (_thorax, 170.0, (-20.0, 60.0), 5.0)}
_ANATOMY["ellipses"] = (_ellipses, 120.0, (-5.0, 5.0), 3.0)
_ANATOMY["texture"] = (_texture, 125.0, (-20.0, 20.0), 4.0)


# ----------------------------------------------------------------------------------------- lesions & ROIs
def _draw_lesions(
    grid: _Grid,
    rng: np.random.Generator,
    activity: torch.Tensor,
    mu: torch.Tensor,
    body: torch.Tensor,
    spec: LesionSpec,
) -> tuple[torch.Tensor, torch.Tensor, list[Lesion], list[torch.Tensor]]:
    """Paint lesions on the fine grid; returns new activity, mu, the lesions and their fine masks."""
    zz, yy, xx = grid.raw
    vz, vy, vx = grid.image.voxel_size_mm
    tissue = body & (activity > 0.08)  # not CSF / air
    n = int(rng.integers(spec.count[0], spec.count[1] + 1))
    lesions: list[Lesion] = []
    masks: list[torch.Tensor] = []
    occupied = torch.zeros_like(body)
    activity, mu = activity.clone(), mu.clone()
    lo, hi = spec.diameter_mm
    for _ in range(n):
        for _attempt in range(50):
            d = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            r = d / 2
            # centre: a random tissue sample far enough (r) from the outline and other lesions
            candidates = torch.nonzero(tissue & ~occupied)
            if candidates.numel() == 0:
                break
            idx = candidates[int(rng.integers(candidates.shape[0]))]
            centre = (float(zz[tuple(idx)]), float(yy[tuple(idx)]), float(xx[tuple(idx)]))
            dist = torch.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
            sphere = dist <= r
            if not bool(sphere.any()) or bool((sphere & ~body).any()) or bool((sphere & occupied).any()):
                continue
            ratio = float(math.exp(rng.uniform(math.log(spec.contrast[0]), math.log(spec.contrast[1]))))
            contrast = ratio if rng.uniform() < spec.hot_fraction else 1.0 / ratio
            local = float(activity[tuple(idx)])
            activity[sphere] = contrast * local
            bone = mu[sphere] > 0.12
            mu[sphere] = torch.where(bone, mu[sphere], torch.tensor(MU_PER_CM["soft_tissue"], dtype=mu.dtype))
            lesions.append(Lesion(centre, d, contrast, local))
            masks.append(sphere)
            occupied |= dist <= r + max(vy, vx)
            break
    return activity, mu, lesions, masks


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    """One-voxel dilation (3x3 in-plane, and along z when there are several slices)."""
    m = mask.float()[None, None]
    kz = 3 if mask.shape[0] > 1 else 1
    return F.max_pool3d(m, (kz, 3, 3), stride=1, padding=(kz // 2, 1, 1))[0, 0] > 0


def edge_mask(truth: torch.Tensor, obj: torch.Tensor, threshold: float = EDGE_THRESHOLD) -> torch.Tensor:
    """Object voxels where the truth ``(z, y, x)`` differs from a neighbour by more than ``threshold`` x the
    median object activity (in-plane, and along z for several slices): both sides of every jump."""
    t = truth.double()
    ref = float(t[obj].median()) if bool(obj.any()) else 1.0
    jump = torch.zeros_like(t)
    for dim in (1, 2) + ((0,) if t.shape[0] > 1 else ()):
        d = torch.diff(t, dim=dim).abs()
        pad_lo = [0, 0, 0, 0, 0, 0]
        pad_hi = [0, 0, 0, 0, 0, 0]
        pos = 2 * (2 - dim)  # F.pad order: x, y, z
        pad_lo[pos + 1] = 1
        pad_hi[pos] = 1
        jump = torch.maximum(jump, F.pad(d, pad_lo))
        jump = torch.maximum(jump, F.pad(d, pad_hi))
    return (jump > threshold * ref) & obj


def roi_masks(truth: torch.Tensor, obj: torch.Tensor, lesion_masks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``object``, ``lesions``, ``lesion_<i>``, ``edges`` and ``background`` masks (see the module docstring)."""
    regions = {"object": obj.clone()}
    union = torch.zeros_like(obj)
    for i, m in enumerate(lesion_masks):
        regions[f"lesion_{i}"] = m
        union |= m
    regions["lesions"] = union
    edges = edge_mask(truth, obj)
    regions["edges"] = edges
    regions["background"] = obj & ~_dilate(edges | union)
    return regions


# ----------------------------------------------------------------------------------------- public API
def family_phantom(
    family: str,
    image: ImageGeometry,
    seed: int,
    lesions: LesionSpec | None = None,
    deform_mm: float | None = None,
) -> FamilyPhantom:
    """Draw the phantom ``seed`` of ``family`` (one of :data:`FAMILIES`) on ``image``.

    Deterministic per ``(family, image, seed, lesions, deform_mm)``. ``lesions`` defaults to
    :class:`LesionSpec` (1-3 lesions, 4-30 mm, contrast 1.5-8, 70 % hot); ``LesionSpec(count=(0, 0))`` gives
    none. ``deform_mm``: amplitude of the smooth random deformation (family default 3-5 mm).
    """
    if family not in _ANATOMY:
        raise ValueError(f"unknown phantom family {family!r}; choose one of {', '.join(FAMILIES)}")
    split = split_of(seed)
    spec = lesions or LesionSpec()
    make, extent, z_range, default_deform = _ANATOMY[family]
    rng = np.random.default_rng([FAMILIES.index(family), seed])
    z_level = rng.uniform(*z_range) if image.shape[0] == 1 else 0.5 * (z_range[0] + z_range[1])
    grid = _Grid(image, rng, z_level, default_deform if deform_mm is None else float(deform_mm))
    k = _fov_scale(image, extent)
    act_f, mu_f, body_f = make(grid, rng, k)
    act_f, mu_f, lesion_list, lesion_fine = _draw_lesions(grid, rng, act_f, mu_f, body_f, spec)
    activity = grid.pool(act_f).clamp_min(0)
    mu = grid.pool(mu_f).clamp_min(0)
    obj = grid.pool(body_f.double()) >= 0.5
    masks = []
    for fine in lesion_fine:
        frac = grid.pool(fine.double())
        m = frac >= 0.5
        m.view(-1)[int(torch.argmax(frac))] = True  # at least the voxel at the lesion centre
        masks.append(m & obj)
    regions = roi_masks(activity, obj, masks)
    contrast = {f"lesion_{i}": les.contrast for i, les in enumerate(lesion_list)}
    return FamilyPhantom(
        activity.float(),
        mu.float(),
        image,
        regions,
        contrast,
        name=f"{family}-{seed}",
        family=family,
        seed=seed,
        split=split,
        lesions=lesion_list,
    )


def family_phantoms(
    family: str, image: ImageGeometry, split: str, num: int, start: int = 0, lesions: LesionSpec | None = None
) -> list[FamilyPhantom]:
    """``num`` phantoms of ``family`` with the seeds :func:`seeds` ``(split, num, start)``."""
    return [family_phantom(family, image, s, lesions) for s in seeds(split, num, start)]
