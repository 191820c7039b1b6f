"""Shared fixtures: small geometries that keep the suite fast on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner

torch.set_num_threads(2)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sirf_data"


@pytest.fixture(scope="session")
def layout_2d() -> SinogramLayout:
    return SinogramLayout(get_scanner("test-2d"))


@pytest.fixture(scope="session")
def image_2d(layout_2d) -> ImageGeometry:
    return ImageGeometry.for_layout(layout_2d)


@pytest.fixture(scope="session")
def layout_3d() -> SinogramLayout:
    """4 rings, span 3, max ring difference 2, views mashed by 2: 9 sinograms x 24 views x 48 bins."""
    scanner = get_scanner("test-3d").with_(name="test-3d-small", num_rings=4)
    return SinogramLayout(scanner, span=3, max_ring_difference=2, view_mashing=2)


@pytest.fixture(scope="session")
def image_3d(layout_3d) -> ImageGeometry:
    return ImageGeometry((7, 40, 40), (2.0, 4.0, 4.0))


def cuda_devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=cuda_devices())
def device(request) -> str:
    return request.param


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "brain" / "emission.hv").is_file():
        pytest.skip("../shared/data/sirf_data is not available")
    return SHARED_DATA
