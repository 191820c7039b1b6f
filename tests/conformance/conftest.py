"""Image grids of the conformance suite: odd and even in-plane sizes, through every backend.

Odd sizes are centred on the axis in STIR's convention as in ours; even ones are exchanged with
SIRF/STIR through STIR's odd grid one voxel larger (half-voxel interpolation, see
``bridge.StirImageGrid``). The even 2D grid is ``ImageGeometry.for_layout``'s default.
"""

import pytest

from petuq_sirf.scanner import ImageGeometry


@pytest.fixture(scope="session", params=["odd", "even"])
def grid_2d(request, layout_2d) -> ImageGeometry:
    return (
        ImageGeometry((1, 63, 63), (4.0, 3.8, 3.8)) if request.param == "odd" else ImageGeometry.for_layout(layout_2d)
    )


@pytest.fixture(scope="session", params=["odd", "even"])
def grid_3d(request) -> ImageGeometry:
    return ImageGeometry((7, 39, 39) if request.param == "odd" else (7, 40, 40), (2.0, 4.0, 4.0))
