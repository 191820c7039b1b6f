"""Backends implementing :class:`petuq_sirf.operators.AcquisitionModel`.

``embedded`` (default, PyTorch) is always available; ``sirf`` and ``stir`` import their
packages lazily and only when asked for.
"""

from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel
from petuq_sirf.backends.registry import (
    BACKENDS,
    BackendUnavailableError,
    acquisition_model_for,
    available_backends,
    backend_available,
    make_acquisition_model,
)

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "EmbeddedAcquisitionModel",
    "acquisition_model_for",
    "available_backends",
    "backend_available",
    "make_acquisition_model",
]
