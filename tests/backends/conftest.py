"""Odd in-plane image sizes: SIRF/STIR centre only odd grids like ours (see bridge.stir_image_geometry)."""

import pytest

from petuq_sirf.scanner import ImageGeometry


@pytest.fixture(scope="session")
def image_2d_odd() -> ImageGeometry:
    return ImageGeometry((1, 63, 63), (4.0, 3.8, 3.8))


@pytest.fixture(scope="session")
def image_3d_odd() -> ImageGeometry:
    return ImageGeometry((7, 39, 39), (2.0, 4.0, 4.0))
