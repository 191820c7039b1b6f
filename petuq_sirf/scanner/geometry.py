"""Cylindrical PET scanner geometry, with the named scanners as STIR defines them.

The table below is the single source of truth for scanner parameters (STIR's
``Scanner.cxx`` values, see ``shared/SCANNERS.md``). All lengths are in mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ScannerGeometry:
    """A cylindrical scanner made of ``num_rings`` rings of ``detectors_per_ring`` crystals.

    Attributes:
        name: canonical name (STIR's first name for the scanner).
        num_rings: number of detector rings.
        detectors_per_ring: crystals per ring (must be divisible by 4).
        inner_radius_mm: inner ring radius in mm.
        average_doi_mm: average depth of interaction in mm (added to the radius).
        ring_spacing_mm: axial distance between ring centres in mm.
        default_bin_size_mm: tangential bin size at the centre in mm.
        num_tangential_bins: default number of non-arc-corrected tangential bins.
        intrinsic_tilt_deg: rotation of the detector ring in degrees.
        tof_bins: number of TOF bins (informational; the embedded model is non-TOF).
        tof_resolution_ps: coincidence timing resolution in ps (informational).
        energy_resolution: energy resolution as FWHM / ``reference_energy_kev`` (0: unknown, as STIR says
            for scanners it has no value for); single-scatter simulation needs it.
        reference_energy_kev: the energy at which ``energy_resolution`` holds, keV.
        energy_window_kev: the vendor's default ``(lower, upper)`` energy window in keV (None: unknown).
    """

    name: str
    num_rings: int
    detectors_per_ring: int
    inner_radius_mm: float
    average_doi_mm: float
    ring_spacing_mm: float
    default_bin_size_mm: float
    num_tangential_bins: int
    intrinsic_tilt_deg: float = 0.0
    tof_bins: int = 1
    tof_resolution_ps: float = 0.0
    energy_resolution: float = 0.0
    reference_energy_kev: float = 511.0
    energy_window_kev: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.num_rings < 1:
            raise ValueError(f"scanner {self.name!r}: num_rings must be >= 1, got {self.num_rings}")
        if self.detectors_per_ring < 4 or self.detectors_per_ring % 4:
            raise ValueError(
                f"scanner {self.name!r}: detectors_per_ring must be a positive multiple of 4, "
                f"got {self.detectors_per_ring}"
            )
        for field in ("inner_radius_mm", "ring_spacing_mm", "default_bin_size_mm"):
            if not getattr(self, field) > 0:
                raise ValueError(f"scanner {self.name!r}: {field} must be > 0")
        if self.num_tangential_bins < 1 or self.num_tangential_bins > self.detectors_per_ring // 2 * 2:
            raise ValueError(f"scanner {self.name!r}: invalid num_tangential_bins {self.num_tangential_bins}")
        if not 0.0 <= self.energy_resolution < 1.0 or not self.reference_energy_kev > 0:
            raise ValueError(
                f"scanner {self.name!r}: energy resolution must be in [0, 1) (FWHM / reference energy) and the "
                f"reference energy > 0 keV, got {self.energy_resolution} at {self.reference_energy_kev} keV"
            )
        if self.energy_window_kev is not None:
            lo, hi = self.energy_window_kev
            if not 0 < lo < hi:
                raise ValueError(f"scanner {self.name!r}: energy window must be 0 < lower < upper keV, got {lo}, {hi}")

    @property
    def effective_radius_mm(self) -> float:
        """Ring radius at the average depth of interaction (mm)."""
        return self.inner_radius_mm + self.average_doi_mm

    @property
    def num_views(self) -> int:
        """Views of an unmashed sinogram: detectors per ring / 2."""
        return self.detectors_per_ring // 2

    @property
    def crystal_angle_rad(self) -> float:
        """Angle between neighbouring crystals in radians."""
        return 2.0 * math.pi / self.detectors_per_ring

    @property
    def num_crystals(self) -> int:
        return self.num_rings * self.detectors_per_ring

    def with_(self, **changes: object) -> ScannerGeometry:
        """A copy with some fields changed (e.g. fewer rings for a quick test)."""
        return replace(self, **changes)


_SCANNERS: dict[str, ScannerGeometry] = {
    "Siemens mMR": ScannerGeometry(
        name="Siemens mMR",
        num_rings=64,
        detectors_per_ring=504,
        inner_radius_mm=328.0,
        average_doi_mm=7.0,
        ring_spacing_mm=4.0625,
        default_bin_size_mm=2.08626,
        num_tangential_bins=344,
        energy_resolution=0.145,
        energy_window_kev=(430.0, 610.0),
    ),
    "Siemens mCT": ScannerGeometry(
        name="Siemens mCT",
        num_rings=55,
        detectors_per_ring=672,
        inner_radius_mm=421.0,
        average_doi_mm=7.0,
        ring_spacing_mm=4.054,
        default_bin_size_mm=2.005,
        num_tangential_bins=400,
        tof_bins=13,
        tof_resolution_ps=555.0,
        energy_window_kev=(435.0, 650.0),
    ),
    "GE Discovery 690": ScannerGeometry(
        name="GE Discovery 690",
        num_rings=24,
        detectors_per_ring=576,
        inner_radius_mm=405.1,
        average_doi_mm=9.4,
        ring_spacing_mm=6.54,
        default_bin_size_mm=2.1306,
        num_tangential_bins=381,
        intrinsic_tilt_deg=-5.021,
        tof_bins=55,
        tof_resolution_ps=550.0,
        energy_window_kev=(425.0, 650.0),
    ),
    # Small scanners for tests and quick demos (not real devices).
    "test-2d": ScannerGeometry(
        name="test-2d",
        num_rings=1,
        detectors_per_ring=128,
        inner_radius_mm=150.0,
        average_doi_mm=5.0,
        ring_spacing_mm=4.0,
        default_bin_size_mm=3.8,
        num_tangential_bins=64,
    ),
    "test-3d": ScannerGeometry(
        name="test-3d",
        num_rings=8,
        detectors_per_ring=96,
        inner_radius_mm=120.0,
        average_doi_mm=5.0,
        ring_spacing_mm=4.0,
        default_bin_size_mm=4.0,
        num_tangential_bins=48,
    ),
}

_ALIASES: dict[str, str] = {
    "siemens mmr": "Siemens mMR",
    "siemens_mmr": "Siemens mMR",
    "mmr": "Siemens mMR",
    "2008": "Siemens mMR",
    "siemens mct": "Siemens mCT",
    "siemens_mct": "Siemens mCT",
    "mct": "Siemens mCT",
    "2011": "Siemens mCT",
    "ge discovery 690": "GE Discovery 690",
    "discovery 690": "GE Discovery 690",
    "ge discovery 710": "GE Discovery 690",
    "d690": "GE Discovery 690",
    "test-2d": "test-2d",
    "test-3d": "test-3d",
}


def scanner_names() -> list[str]:
    """Canonical names of all known scanners."""
    return list(_SCANNERS)


def get_scanner(name: str) -> ScannerGeometry:
    """Look up a scanner by any of STIR's names (case-insensitive), e.g. ``"mMR"``."""
    key = _ALIASES.get(name.strip().lower())
    if key is None:
        known = ", ".join(sorted(_SCANNERS))
        raise ValueError(f"unknown scanner name {name!r}; known scanners: {known} (and STIR aliases)")
    return _SCANNERS[key]
