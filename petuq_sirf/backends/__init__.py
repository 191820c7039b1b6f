"""Backends implementing :class:`petuq_sirf.operators.AcquisitionModel`.

``embedded`` (default, PyTorch) is always available; ``sirf`` and ``stir`` import their
packages lazily and only when asked for.
"""

from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel

__all__ = ["EmbeddedAcquisitionModel"]
