"""Backend selection: ``embedded`` (default, always present), ``sirf`` and ``stir`` (imported lazily).

Every backend builds an object implementing :class:`petuq_sirf.operators.AcquisitionModel`
from the same inputs (sinogram layout, image grid, multiplicative and additive terms in
our convention ``ybar = m * G x + b``), so reconstruction and UQ code never needs to know
which one it runs on.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from petuq_sirf.io.acquisition_folder import Acquisition
from petuq_sirf.operators.acquisition import AcquisitionModel
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout

BACKENDS: tuple[str, ...] = ("embedded", "sirf", "stir")
DEFAULT_BACKEND = "embedded"

SIRF_DOCKER_IMAGE = "ghcr.io/synerbi/sirf"

_INSTALL_HINTS = {
    "sirf": (
        "SIRF is not on PyPI or conda-forge. Run petuq inside the SyneRBI container, e.g. "
        f"'docker run --rm -it -v $PWD:/data {SIRF_DOCKER_IMAGE}:latest' (or build the image from this "
        "repository's Dockerfile), or build SIRF-SuperBuild; see docs/sirf_stir.md"
    ),
    "stir": (
        "install STIR's Python bindings with 'conda install -c conda-forge stir' (see environment.yml), "
        "or use the SyneRBI container, which includes STIR; see docs/sirf_stir.md"
    ),
}

_MODULES = {"sirf": "sirf.STIR", "stir": "stir"}


class BackendUnavailableError(ValueError):
    """A backend was asked for but its package does not import here; the message says how to get it."""


@dataclass(frozen=True)
class Backend:
    """A named backend and its model factory ``make(layout, image, multiplicative, additive, psf_fwhm_mm, device, **options)``."""

    name: str
    make: Callable[..., AcquisitionModel]
    description: str


def _check_name(name: str) -> str:
    key = str(name).strip().lower()
    if key not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return key


def backend_available(name: str) -> bool:
    """Whether backend ``name`` can be used here (its package imports)."""
    key = _check_name(name)
    if key == "embedded":
        return True
    try:
        importlib.import_module(_MODULES[key])
    except Exception:  # ImportError, or a broken installation raising something else
        return False
    return True


def available_backends() -> list[str]:
    """Names of the backends usable here, ``embedded`` first."""
    return [b for b in BACKENDS if backend_available(b)]


def require_backend(name: str) -> str:
    """The canonical name, or :class:`BackendUnavailableError` saying how to install the missing package."""
    key = _check_name(name)
    if key != "embedded":
        try:
            importlib.import_module(_MODULES[key])
        except Exception as exc:
            raise BackendUnavailableError(
                f"backend {key!r} needs the Python module '{_MODULES[key]}', which does not import here "
                f"({type(exc).__name__}: {exc}). {_INSTALL_HINTS[key]}"
            ) from exc
    return key


def _make_embedded(layout, image, multiplicative=None, additive=None, psf_fwhm_mm=0.0, device="cpu", **options):
    from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel

    return EmbeddedAcquisitionModel(layout, image, multiplicative, additive, psf_fwhm_mm, device, **options)


def _make_sirf(layout, image, multiplicative=None, additive=None, psf_fwhm_mm=0.0, device="cpu", **options):
    from petuq_sirf.backends.sirf_backend import SirfAcquisitionModel

    return SirfAcquisitionModel(layout, image, multiplicative, additive, psf_fwhm_mm, device, **options)


def _make_stir(layout, image, multiplicative=None, additive=None, psf_fwhm_mm=0.0, device="cpu", **options):
    from petuq_sirf.backends.stir_backend import StirAcquisitionModel

    return StirAcquisitionModel(layout, image, multiplicative, additive, psf_fwhm_mm, device, **options)


_FACTORIES = {
    "embedded": Backend("embedded", _make_embedded, "PyTorch Joseph ray tracer (CPU/GPU, differentiable)"),
    "sirf": Backend("sirf", _make_sirf, "SIRF sirf.STIR AcquisitionModelUsingRayTracingMatrix"),
    "stir": Backend("stir", _make_stir, "STIR Python ProjMatrixByBinUsingRayTracing"),
}


def get_backend(name: str = DEFAULT_BACKEND) -> Backend:
    """The backend called ``name`` (``embedded``, ``sirf`` or ``stir``); raises if it is not usable here."""
    return _FACTORIES[require_backend(name)]


def make_acquisition_model(
    backend: str,
    layout: SinogramLayout,
    image: ImageGeometry,
    multiplicative: torch.Tensor | None = None,
    additive: torch.Tensor | None = None,
    psf_fwhm_mm: float = 0.0,
    device: str | torch.device = "cpu",
    **options,
) -> AcquisitionModel:
    """An acquisition model ``m * G x + b`` of ``backend`` for ``layout`` and ``image`` (see the module docstring)."""
    return get_backend(backend).make(layout, image, multiplicative, additive, psf_fwhm_mm, device, **options)


def model_like(model: AcquisitionModel, backend: str) -> AcquisitionModel:
    """The same acquisition (layout, image, terms, PSF) as an embedded ``model``, on another backend."""
    layout = getattr(model, "layout", None)
    image = getattr(model, "image", None)
    if layout is None or image is None:
        raise ValueError("model_like needs a model that carries its layout and image (e.g. the embedded one)")
    if require_backend(backend) == "embedded" and type(model).__name__ == "EmbeddedAcquisitionModel":
        return model
    return make_acquisition_model(
        backend,
        layout,
        image,
        model.multiplicative,
        model.additive,
        getattr(model, "psf_fwhm_mm", 0.0),
        model.device,
    )


def acquisition_model_for(
    acquisition: Acquisition, backend: str = DEFAULT_BACKEND, device: str | torch.device = "cpu", **options
) -> AcquisitionModel:
    """The model ``m * G x + b`` of an :class:`~petuq_sirf.io.acquisition_folder.Acquisition` on ``backend``."""
    a = acquisition
    return make_acquisition_model(
        backend, a.layout, a.image, a.multiplicative, a.additive, a.psf_fwhm_mm, device, **options
    )
