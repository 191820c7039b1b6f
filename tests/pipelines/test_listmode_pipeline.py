"""The list-mode -> acquisition pipeline as a library call, with the scatter tail fit of the mMR example."""

import pytest
import torch

from petuq_sirf.io.interfile import write_image
from petuq_sirf.io.mmr_listmode import write_mmr_listmode
from petuq_sirf.pipelines.listmode import acquisition_from_listmode, tail_fitted_scatter
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation import SimulationConfig, nema_iec_phantom, simulate


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A 2-ring test-3d acquisition with 30 % scatter, written as a PETLINK file plus its mu-map."""
    folder = tmp_path_factory.mktemp("scan")
    layout = SinogramLayout(get_scanner("test-3d").with_(num_rings=2), span=1, view_mashing=2)
    image = ImageGeometry((3, 33, 33), (4.0, 6.0, 6.0))
    sim = simulate(
        nema_iec_phantom(image),
        layout,
        SimulationConfig(true_counts=2e5, scatter_fraction=0.3, efficiency_spread=0.0, listmode=True, seed=3),
    )
    hdr = write_mmr_listmode(folder / "scan.l.hdr", sim.listmode, layout, file_span=1)
    mu = write_image(folder / "mu.hv", sim.mu_per_cm.numpy(), image, layout.scanner)
    return layout, image, sim, hdr, mu


def test_listmode_to_acquisition_with_tail_fitted_scatter(scan):
    layout, image, sim, hdr, mu = scan
    acq = acquisition_from_listmode(
        hdr, layout.scanner, span=1, view_mashing=2, mu_map=mu, tail_fit_scatter=True, progress=False
    )
    assert acq.layout.shape == layout.shape and acq.image.shape == image.shape
    assert torch.equal(acq.prompts, sim.prompts.cpu()) and torch.equal(acq.delayeds, sim.delayeds.cpu())
    assert torch.allclose(acq.multiplicative, sim.attenuation.cpu(), rtol=1e-4, atol=1e-5)
    assert acq.info["scatter_method"] == "tail fit"
    # the tail fit recovers the simulated scatter total to within 25 % (smooth shape, noisy tails)
    assert acq.scatter.sum() == pytest.approx(float(sim.scatter.sum()), rel=0.25)
    assert torch.allclose(acq.additive, acq.randoms_estimate + acq.scatter)
    assert acq.listmode is not None and len(acq.listmode) == len(sim.listmode)


def test_tail_fit_falls_back_when_there_are_no_tails(scan):
    layout, image, sim, _, _ = scan
    from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel

    ones = torch.ones(layout.shape)
    model = EmbeddedAcquisitionModel(layout, image, ones, sim.randoms_estimate)
    no_tails = torch.full(layout.shape, 0.5)
    scatter, method = tail_fitted_scatter(model, layout, sim.prompts, sim.randoms_estimate, no_tails, ones, 1, 0.2)
    net = float((sim.prompts - sim.randoms_estimate).clamp_min(0).sum())
    assert method == "assumed fraction" and float(scatter.sum()) == pytest.approx(0.2 * net, rel=1e-4)


def test_bad_requests_are_one_line_errors(scan, tmp_path):
    _, _, _, hdr, mu = scan
    with pytest.raises(FileNotFoundError, match="does not exist"):
        acquisition_from_listmode(tmp_path / "missing.l.hdr")
    with pytest.raises(ValueError, match="needs a mu-map"):
        acquisition_from_listmode(hdr, scan[0].scanner, span=1, tail_fit_scatter=True)
    with pytest.raises(ValueError, match="not both"):
        acquisition_from_listmode(hdr, span=1, mu_map=mu, scatter=mu, tail_fit_scatter=True)
