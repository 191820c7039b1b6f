"""Classical bootstrap sinograms made by STIR's ``lm_to_projdata_bootstrap``.

``lm_to_projdata_bootstrap PAR_FILE SEED`` reads a list-mode file, draws as many events as it holds
with replacement and bins them like ``lm_to_projdata``. The parameter file and the run are the
STIR backend's (:func:`petuq_sirf.backends.stir_backend.lm_to_projdata_bootstrap`, the only writer
of that file); here the replicate's integer seed comes from
:func:`~petuq_sirf.bootstrap.weights.replicate_int_seed`, and the sinograms are then reconstructed
by our code. The list-mode input must be a file STIR reads (a Siemens mMR ``.l.hdr`` in span 1,
see :mod:`petuq_sirf.io.mmr_listmode`).
"""

from __future__ import annotations

import os

import torch

from petuq_sirf.backends.stir_backend import (
    BOOTSTRAP_EXECUTABLE as EXECUTABLE,
)
from petuq_sirf.backends.stir_backend import (
    lm_to_projdata_bootstrap,
    stir_bootstrap_executable,
    write_bootstrap_par,
)
from petuq_sirf.scanner.layout import SinogramLayout

__all__ = ["EXECUTABLE", "stir_bootstrap_executable", "stir_bootstrap_sinogram", "write_bootstrap_par"]


def stir_bootstrap_sinogram(
    listmode_file: str | os.PathLike,
    template: SinogramLayout | str | os.PathLike,
    seed: int,
    workdir: str | os.PathLike,
    executable: str | None = None,
    timeout_s: float | None = None,
    start_s: float = 0.0,
    stop_s: float | None = None,
) -> torch.Tensor:
    """One STIR bootstrap sinogram ``(sinograms, views, tangential)`` (float32) of the list-mode file.

    ``template``: a layout or a STIR ``.hs`` header. Raises ``FileNotFoundError`` when the
    executable is absent and ``RuntimeError`` (with STIR's last output lines) when it fails.
    """
    return lm_to_projdata_bootstrap(
        listmode_file, template, seed, workdir, start_s, stop_s, executable=executable, timeout_s=timeout_s
    )
