import numpy as np
import pytest
import torch

from petuq_sirf.scanner import ImageGeometry
from petuq_sirf.simulation import brain_phantom, make_phantom, nema_iec_phantom, random_ellipses_phantom


@pytest.fixture(scope="module")
def fine_image():
    return ImageGeometry((1, 160, 160), (4.0, 2.0, 2.0))


def test_nema_spheres_have_their_contrast_and_size(fine_image):
    ph = nema_iec_phantom(fine_image, hot_ratio=4.0)
    bkg = float(ph.activity[ph.regions["background"]].mean())
    assert bkg == pytest.approx(1.0)
    for name, ratio in ph.contrast.items():
        inside = ph.activity[ph.regions[name]]
        assert inside.numel() > 0
        assert float(inside.mean()) == pytest.approx(ratio * bkg)
    # sphere areas grow with the nominal diameters
    areas = [int(ph.regions[n].sum()) for n in ph.contrast]
    assert areas == sorted(areas)
    assert float(ph.mu_per_cm.max()) == pytest.approx(0.096, abs=1e-3)


def test_brain_phantom_tissues_and_lesions(fine_image):
    ph = brain_phantom(fine_image)
    assert set(ph.contrast) == {"hot_lesion", "cold_lesion"}
    assert float(ph.activity[ph.regions["hot_lesion"]].mean()) == pytest.approx(3.0)
    assert float(ph.activity[ph.regions["background"]].mean()) == pytest.approx(1.0)
    assert 0.14 < float(ph.mu_per_cm.max()) < 0.16  # skull


def test_random_phantoms_are_seeded_and_3d_capable():
    image = ImageGeometry((5, 48, 48), (4.0, 4.0, 4.0))
    a = random_ellipses_phantom(image, np.random.default_rng(1))
    b = random_ellipses_phantom(image, np.random.default_rng(1))
    c = random_ellipses_phantom(image, np.random.default_rng(2))
    assert torch.equal(a.activity, b.activity) and not torch.equal(a.activity, c.activity)
    assert a.activity.shape == (5, 48, 48) and (a.activity >= 0).all()
    with pytest.raises(ValueError, match="unknown phantom"):
        make_phantom("shepp", image)
