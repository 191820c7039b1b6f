import argparse
import sys

import pytest
import torch

from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel
from petuq_sirf.backends.registry import (
    BackendUnavailableError,
    available_backends,
    backend_available,
    get_backend,
    make_acquisition_model,
    model_like,
)
from petuq_sirf.cli.common import add_backend_argument, resolve_backend


def _hide(monkeypatch, *modules):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # makes "import name" raise ImportError


def test_embedded_is_default_and_always_available(layout_2d, image_2d_odd):
    assert available_backends()[0] == "embedded" and backend_available("EMBEDDED")
    model = make_acquisition_model("embedded", layout_2d, image_2d_odd, psf_fwhm_mm=2.0)
    assert isinstance(model, EmbeddedAcquisitionModel) and model.psf is not None
    assert model_like(model, "embedded") is model
    parser = argparse.ArgumentParser()
    add_backend_argument(parser)
    assert parser.parse_args([]).backend == "embedded"
    assert parser.parse_args(["--backend", "stir"]).backend == "stir"


def test_missing_sirf_says_how_to_get_it(monkeypatch, layout_2d, image_2d_odd):
    _hide(monkeypatch, "sirf", "sirf.STIR")
    assert not backend_available("sirf") and "sirf" not in available_backends()
    with pytest.raises(BackendUnavailableError, match=r"ghcr.io/synerbi/sirf.*docs/sirf_stir.md"):
        get_backend("sirf")
    with pytest.raises(ValueError, match="Docker|docker"):  # the CLI prints ValueErrors as one line
        resolve_backend("sirf")
    with pytest.raises(BackendUnavailableError, match="sirf"):
        make_acquisition_model("sirf", layout_2d, image_2d_odd)
    from petuq_sirf.backends.sirf_backend import SirfAcquisitionModel

    with pytest.raises(BackendUnavailableError):
        SirfAcquisitionModel(layout_2d, image_2d_odd)


def test_missing_stir_says_how_to_install(monkeypatch, layout_2d, image_2d_odd):
    _hide(monkeypatch, "stir")
    with pytest.raises(BackendUnavailableError, match="conda-forge stir"):
        make_acquisition_model("stir", layout_2d, image_2d_odd, torch.ones(layout_2d.shape))


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown backend 'parallelproj'"):
        get_backend("parallelproj")
