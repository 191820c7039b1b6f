"""The STIR adapter against the fake ``stir`` (fake_stir.py) AND the real one where it imports.

Every test taking ``stir_impl`` runs twice: with the fake, which must equal the embedded model to
float precision (it has our projector inside), and with the real STIR, which must agree with the
STIR-matched embedded model (``helpers.stir_matched_model``) within ``helpers.REAL_NRMSE`` — so the fake is checked against
the library it stands in for. Exact properties (adjoint identity, autograd = adjoint, terms) are
exact on both.
"""

import gc

import numpy as np
import pytest
import torch

from petuq_sirf.backends.bridge import DEFAULT_RAYS_PER_BIN, StirImageGrid
from petuq_sirf.backends.registry import make_acquisition_model
from petuq_sirf.scanner import ImageGeometry
from tests.backends import fake_stir
from tests.backends.helpers import assert_close, nrmse, smooth_image, stir_matched_model
from tests.backends.isolation import SMOKE, importable, run_isolated


def _dot(a, b):
    return float((a.double() * b.double()).sum())


@pytest.mark.parametrize("psf", [0.0, 4.0])
def test_stir_adapter_matches_embedded(stir_impl, layout_3d, image_3d_odd, psf):
    g = torch.Generator().manual_seed(0)
    m = 0.5 + torch.rand(layout_3d.shape, generator=g)
    b = torch.rand(layout_3d.shape, generator=g)
    model = make_acquisition_model("stir", layout_3d, image_3d_odd, m, b, psf_fwhm_mm=psf)
    ref = stir_matched_model(layout_3d, image_3d_odd, m, b, psf_fwhm_mm=psf)
    x = smooth_image(image_3d_odd, batch=2)
    y = ref.forward(x[1])
    assert_close(stir_impl, model.forward(x), ref.forward(x))
    assert_close(stir_impl, model.adjoint(y), ref.adjoint(y), atol=1e-3)
    assert_close(stir_impl, model.subset(2, 3).forward(x[0]), ref.subset(2, 3).forward(x[0]))
    # exact on both: adjoint identity, gradient = adjoint, terms
    w = torch.rand(layout_3d.shape, generator=g)
    assert _dot(model.direct(x[0]), w) == pytest.approx(_dot(x[0], model.adjoint(w)), rel=1e-4)
    x0 = x[0].clone().requires_grad_(True)
    (model.forward(x0) * w).sum().backward()
    assert torch.allclose(x0.grad, model.adjoint(w), rtol=1e-4, atol=1e-4)
    other = model.with_terms(additive=torch.zeros(layout_3d.shape))
    assert torch.allclose(other.forward(x[0]), model.direct(x[0]), rtol=1e-4, atol=1e-5)
    assert torch.allclose(model.forward(x[0]) - model.direct(x[0]), b, atol=1e-4)


def test_even_grids_are_exchanged_at_half_voxels(stir_impl, layout_3d, image_3d):
    """40 x 40 (even): STIR's odd 41 x 41 grid, our image interpolated onto it; exact adjoint."""
    model = make_acquisition_model("stir", layout_3d, image_3d)
    assert model.projector_settings()["image_exchange"] == "half-voxel"
    ref = stir_matched_model(layout_3d, image_3d)
    x = smooth_image(image_3d, seed=3)
    assert nrmse(model.forward(x), ref.forward(x)) < 0.05  # the 2-tap blur of a smooth image is small
    assert float(model.forward(x).sum() / ref.forward(x).sum()) == pytest.approx(1.0, abs=0.01)
    w = torch.rand(layout_3d.shape, generator=torch.Generator().manual_seed(4))
    assert _dot(model.direct(x), w) == pytest.approx(_dot(x, model.adjoint(w)), rel=1e-4)


def test_stir_image_grid_conventions(layout_3d, image_3d, image_3d_odd):
    # measured with STIR 6 forward_project (docs/sirf_stir.md): z from the first ring, x-voxel units
    g = StirImageGrid(layout_3d, image_3d_odd)
    assert g.geometry.offset_mm == (1.5 * 4.0, 0.0, 0.0)  # 4 rings of 4 mm: the scanner centre is 6 mm from ring 0
    assert g.geometry.first_voxel_mm(0) == pytest.approx(0.0)  # 7 planes of 2 mm start at the first ring
    assert g.unit_mm == 4.0 and g.exact and g.shape == image_3d_odd.shape
    even = StirImageGrid(layout_3d, image_3d)  # 40 x 40
    assert even.shape == (7, 41, 41) and not even.exact
    # STIR's voxel centres (integers x 4 mm) fall on our voxel boundaries
    assert even.geometry.centres_mm(2)[0] == pytest.approx(image_3d.centres_mm(2)[0] - 2.0)
    rng = np.random.default_rng(0)
    x, z = rng.random(image_3d.shape, np.float32), rng.random(even.shape, np.float32)
    assert float((even.to_stir(x) * z).sum()) == pytest.approx(float((x * even.from_stir(z)).sum()), rel=1e-5)
    assert float(even.to_stir(x).sum()) == pytest.approx(float(x.sum()), rel=1e-5)  # mass preserved
    # zero padding for the unrestricted FOV: one voxel per in-plane side, cropped on the way back (exact adjoint)
    padded = StirImageGrid(layout_3d, image_3d, pad_xy=1)
    assert padded.shape == (7, 43, 43) and padded.geometry.centres_mm(2)[1] == pytest.approx(
        even.geometry.centres_mm(2)[0]
    )
    zp = rng.random(padded.shape, np.float32)
    assert float((padded.to_stir(x) * zp).sum()) == pytest.approx(float((x * padded.from_stir(zp)).sum()), rel=1e-5)
    assert np.array_equal(padded.to_stir(x)[:, 1:-1, 1:-1], even.to_stir(x)) and padded.to_stir(x)[:, 0].max() == 0
    with pytest.raises(ValueError, match="centred on the scanner axis"):
        StirImageGrid(layout_3d, ImageGeometry((7, 39, 39), (2.0, 4.0, 4.0), (0.0, 2.0, 0.0)))


def test_settings_are_explicit_and_workdir_is_created(stir_impl, layout_3d, image_3d_odd, tmp_path):
    folder = tmp_path / "not" / "there"
    model = make_acquisition_model("stir", layout_3d, image_3d_odd, workdir=folder)
    assert (folder / "template.hs").is_file() and (folder / "template.hv").is_file()
    settings = model.projector_settings()
    assert settings["num_tangential_lors"] == DEFAULT_RAYS_PER_BIN and not settings["restrict_to_cylindrical_fov"]
    assert settings["image_padding_xy"] == 1 and model.grid.shape == (7, 41, 41)  # the whole grid is traced
    restricted = make_acquisition_model("stir", layout_3d, image_3d_odd, restrict_to_cylindrical_fov=True)
    assert restricted.projector_settings()["image_padding_xy"] == 0 and restricted.grid.shape == (7, 39, 39)
    assert model._stir["matrix"].get_num_tangential_LORs() == DEFAULT_RAYS_PER_BIN  # set on the matrix itself
    three = make_acquisition_model("stir", layout_3d, image_3d_odd, num_tangential_lors=3)
    assert three._stir["matrix"].get_num_tangential_LORs() == 3
    assert three.with_terms(additive=torch.ones(layout_3d.shape)).projector_settings()["num_tangential_lors"] == 3


def test_projection_data_outlives_its_template_fake(monkeypatch, layout_3d, image_3d_odd):
    """The fake frees a template's ExamInfo eagerly (as C++ does); the model keeps the template alive."""
    fake_stir.install(monkeypatch)
    import stir

    model = make_acquisition_model("stir", layout_3d, image_3d_odd)
    gc.collect()
    x = smooth_image(image_3d_odd)
    y = model.forward(x)
    again = model.with_terms(additive=torch.ones(layout_3d.shape))
    del model
    gc.collect()
    assert torch.allclose(again.forward(x), y + 1, atol=1e-4)
    # the fake does bite: in-memory data made from a dropped template is unusable
    hs = next(iter(again._stir["folder"].glob("*.hs")))
    dangling = stir.ProjDataInMemory(stir.ProjData.read_from_file(str(hs)).get_exam_info(), layout_3d)
    with pytest.raises(fake_stir.DanglingPointerError):
        dangling.fill(0.0)


@pytest.mark.skipif(not importable("stir"), reason="the real stir is not importable here")
@pytest.mark.parametrize("n", [15, 16])
def test_projection_data_outlives_its_template_real(n):
    """Against real STIR, in a child process (before the fix this segfaulted)."""
    proc = run_isolated(SMOKE.format(backend="stir", n=n))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert any(line.startswith("ok") for line in proc.stdout.splitlines()), proc.stdout[
        -2000:
    ]  # STIR logs to stdout too
