"""Fixtures of the adapter tests: odd and even grids, and each adapter over the fake AND the real module.

``stir_impl`` / ``sirf_impl`` are ``"fake"`` (``tests/backends/fake_*.py`` installed) or ``"real"``
(the real library, skipped where it is not importable, run only after a clean smoke run in a child
process, see ``isolation.py``). The same assertions run against both, so the fakes are checked
against the libraries they stand in for; the fakes (our projector inside) are also held to
exact agreement with the embedded model.
"""

import pytest

from petuq_sirf.scanner import ImageGeometry
from tests.backends import fake_sirf, fake_stir
from tests.backends.isolation import real_backend_guard


@pytest.fixture(scope="session")
def image_2d_odd() -> ImageGeometry:
    return ImageGeometry((1, 63, 63), (4.0, 3.8, 3.8))


@pytest.fixture(scope="session")
def image_3d_odd() -> ImageGeometry:
    return ImageGeometry((7, 39, 39), (2.0, 4.0, 4.0))


@pytest.fixture(params=["fake", "real"])
def stir_impl(request, monkeypatch) -> str:
    if request.param == "fake":
        fake_stir.install(monkeypatch)
    else:
        real_backend_guard("stir")
    return request.param


@pytest.fixture(params=["fake", "real"])
def sirf_impl(request, monkeypatch) -> str:
    if request.param == "fake":
        fake_sirf.install(monkeypatch)
    else:
        real_backend_guard("sirf")
    return request.param
