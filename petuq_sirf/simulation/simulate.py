"""Simulate a scanner-realistic PET acquisition with the embedded model.

``prompts ~ Poisson(eff * att * G(k x) + scatter + randoms)``, ``delayeds ~ Poisson(randoms)``,
with ``k`` chosen so the expected number of true (unscattered) coincidences is ``true_counts``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel
from petuq_sirf.io.acquisition_folder import Acquisition
from petuq_sirf.io.listmode import ListModeEvents
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout
from petuq_sirf.simulation.attenuation import attenuation_factors
from petuq_sirf.simulation.listmode_draws import events_from_counts
from petuq_sirf.simulation.normalisation import bin_efficiencies, crystal_efficiencies
from petuq_sirf.simulation.phantoms import Phantom
from petuq_sirf.simulation.randoms import estimate_randoms, randoms_from_singles
from petuq_sirf.simulation.scatter import scatter_sinogram

MAX_TRUE_COUNTS = 1e10  # expected true counts; a long whole-body scan records about 1e9
MAX_LISTMODE_COUNTS = 5e8  # list-mode events are held in memory (17 bytes each)


@dataclass
class SimulationConfig:
    """Physics and noise settings. Fractions are of expected counts.

    Attributes:
        true_counts: expected number of true (unscattered) coincidences.
        randoms_fraction: expected randoms / prompts.
        scatter_fraction: expected scatter / (trues + scatter).
        psf_fwhm_mm: Gaussian resolution (FWHM, mm) applied in the forward model.
        efficiency_spread: log-normal spread of crystal efficiencies (0 = uniform).
        attenuation: apply attenuation from the phantom's mu-map.
        randoms_estimate_iterations: ML-singles iterations for the randoms estimate from delayeds.
        listmode: also produce list-mode events.
        duration_s: acquisition duration in s (list-mode times).
        seed: seed of every random draw.
    """

    true_counts: float = 1e6
    randoms_fraction: float = 0.2
    scatter_fraction: float = 0.3
    psf_fwhm_mm: float = 4.0
    efficiency_spread: float = 0.1
    attenuation: bool = True
    randoms_estimate_iterations: int = 30
    listmode: bool = False
    duration_s: float = 600.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.true_counts > 0 or not np.isfinite(self.true_counts):
            raise ValueError(f"true_counts must be a positive number, got {self.true_counts}")
        if self.true_counts > MAX_TRUE_COUNTS:
            raise ValueError(
                f"true_counts {self.true_counts:g} is above the maximum {MAX_TRUE_COUNTS:g} "
                "(a long whole-body PET scan records about 1e9 counts)"
            )
        if self.listmode and self.true_counts > MAX_LISTMODE_COUNTS:
            raise ValueError(
                f"true_counts {self.true_counts:g} is too many list-mode events to hold in memory "
                f"(at most {MAX_LISTMODE_COUNTS:g}, 17 bytes each): simulate without list-mode"
            )
        if not 0 <= self.randoms_fraction < 1:
            raise ValueError(f"randoms_fraction must be in [0, 1), got {self.randoms_fraction}")
        if not 0 <= self.scatter_fraction < 1:
            raise ValueError(f"scatter_fraction must be in [0, 1), got {self.scatter_fraction}")
        if self.psf_fwhm_mm < 0:
            raise ValueError(f"psf_fwhm_mm must be >= 0, got {self.psf_fwhm_mm}")


@dataclass
class SimulatedAcquisition:
    """Everything a simulation produces. Sinograms have shape ``layout.shape``, images ``image.shape``.

    ``truth`` is the activity in reconstruction units (the phantom times ``activity_scale``), so
    an unbiased reconstruction of ``prompts`` with :meth:`acquisition_model` converges to it.
    ``additive`` uses the randoms *estimated* from the delayeds (what a user has);
    ``additive_true`` the true expectation.
    """

    layout: SinogramLayout
    image: ImageGeometry
    config: SimulationConfig
    truth: torch.Tensor
    mu_per_cm: torch.Tensor
    prompts: torch.Tensor
    delayeds: torch.Tensor
    randoms: torch.Tensor
    randoms_estimate: torch.Tensor
    scatter: torch.Tensor
    efficiency: torch.Tensor
    attenuation: torch.Tensor
    expected_prompts: torch.Tensor
    activity_scale: float
    regions: dict[str, torch.Tensor]
    contrast: dict[str, float]
    listmode: ListModeEvents | None = None

    @property
    def multiplicative(self) -> torch.Tensor:
        return self.efficiency * self.attenuation

    @property
    def additive(self) -> torch.Tensor:
        return self.randoms_estimate + self.scatter

    @property
    def additive_true(self) -> torch.Tensor:
        return self.randoms + self.scatter

    @property
    def psf_fwhm_mm(self) -> float:
        """The simulated resolution (mm), as an acquisition folder records it."""
        return float(self.config.psf_fwhm_mm)

    def acquisition_model(
        self, device: str | torch.device = "cpu", psf_fwhm_mm: float | None = None
    ) -> EmbeddedAcquisitionModel:
        """The embedded model a user would reconstruct with (estimated randoms, known scatter)."""
        fwhm = self.config.psf_fwhm_mm if psf_fwhm_mm is None else psf_fwhm_mm
        return EmbeddedAcquisitionModel(self.layout, self.image, self.multiplicative, self.additive, fwhm, device)

    def to_acquisition(self) -> Acquisition:
        """This simulation as the :class:`~petuq_sirf.io.acquisition_folder.Acquisition` a user would have."""
        sim = self
        return Acquisition(
            layout=sim.layout,
            image=sim.image,
            prompts=sim.prompts.cpu(),
            multiplicative=sim.multiplicative.cpu(),
            additive=sim.additive.cpu(),
            psf_fwhm_mm=sim.config.psf_fwhm_mm,
            delayeds=sim.delayeds.cpu(),
            randoms_estimate=sim.randoms_estimate.cpu(),
            scatter=sim.scatter.cpu(),
            truth=sim.truth.cpu(),
            mu_per_cm=sim.mu_per_cm.cpu(),
            regions=sim.regions,
            contrast=sim.contrast,
            listmode=sim.listmode,
            info=sim.summary(),
        )

    def summary(self) -> dict:
        trues = float((self.expected_prompts - self.randoms - self.scatter).sum())
        return {
            "scanner": self.layout.scanner.name,
            "sinogram_shape": list(self.layout.shape),
            "image_shape": list(self.image.shape),
            "voxel_size_mm": list(self.image.voxel_size_mm),
            "prompts": float(self.prompts.sum()),
            "delayeds": float(self.delayeds.sum()),
            "expected_trues": trues,
            "expected_scatter": float(self.scatter.sum()),
            "expected_randoms": float(self.randoms.sum()),
            "randoms_estimate_total": float(self.randoms_estimate.sum()),
            "activity_scale": self.activity_scale,
            "config": asdict(self.config),
        }


def geometric_model(
    layout: SinogramLayout, image: ImageGeometry, psf_fwhm_mm: float = 4.0, **kwargs
) -> EmbeddedAcquisitionModel:
    """An embedded model without multiplicative/additive terms (a projector shared by many simulations)."""
    return EmbeddedAcquisitionModel(layout, image, psf_fwhm_mm=psf_fwhm_mm, **kwargs)


def simulate(
    phantom: Phantom,
    layout: SinogramLayout,
    config: SimulationConfig | None = None,
    device: str | torch.device = "cpu",
    model: EmbeddedAcquisitionModel | None = None,
) -> SimulatedAcquisition:
    """Simulate prompts, delayeds (and optionally list-mode) for ``phantom`` on ``layout``.

    ``model`` may pass a prebuilt noiseless geometric model (same layout/image) to reuse its
    projector across many realisations.
    """
    config = config or SimulationConfig()
    image = phantom.image
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    if model is None:
        model = EmbeddedAcquisitionModel(layout, image, psf_fwhm_mm=config.psf_fwhm_mm, device=device)
    elif model.layout != layout or model.image != image:
        raise ValueError("the given model's layout or image does not match the simulation")
    activity = phantom.activity.to(model.device, model.dtype)
    if (activity < 0).any() or not torch.isfinite(activity).all():
        raise ValueError("phantom activity must be finite and >= 0")
    eff_crystal = crystal_efficiencies(layout.scanner, config.efficiency_spread, seed=config.seed)
    efficiency = bin_efficiencies(layout, eff_crystal).to(model.device)
    if config.attenuation:
        att = attenuation_factors(model.projector, phantom.mu_per_cm.to(model.device, model.dtype))
    else:
        att = torch.ones(layout.shape, device=model.device)
    with torch.no_grad():
        geometric = model.geometric(activity)
    trues_unit = (efficiency * att * geometric).sum()
    if trues_unit <= 0:
        raise ValueError("the phantom projects to zero counts: is it inside the scanner's field of view?")
    scale = float(config.true_counts / trues_unit)
    emission = att * geometric * scale
    trues = efficiency * emission
    scatter = scatter_sinogram(layout, emission.cpu(), config.scatter_fraction, efficiency.cpu()).to(model.device)
    singles = eff_crystal
    randoms_unit = randoms_from_singles(layout, singles).to(model.device)
    t_plus_s = float(trues.sum() + scatter.sum())
    randoms_total = config.randoms_fraction * t_plus_s / (1 - config.randoms_fraction)
    randoms = randoms_unit * (randoms_total / float(randoms_unit.sum())) if randoms_total > 0 else 0 * randoms_unit
    expected = trues + scatter + randoms
    prompts = torch.poisson(expected.cpu().double(), generator=gen).float()
    delayeds = torch.poisson(randoms.cpu().double(), generator=gen).float()
    if config.randoms_fraction > 0:
        randoms_est = estimate_randoms(layout, delayeds, config.randoms_estimate_iterations)
    else:
        randoms_est = torch.zeros(layout.shape)
    listmode = events_from_counts(prompts, delayeds, config.duration_s, rng) if config.listmode else None
    dev = model.device
    return SimulatedAcquisition(
        layout=layout,
        image=image,
        config=config,
        truth=(activity * scale).cpu(),
        mu_per_cm=phantom.mu_per_cm.cpu(),
        prompts=prompts.to(dev),
        delayeds=delayeds.to(dev),
        randoms=randoms,
        randoms_estimate=randoms_est.to(dev),
        scatter=scatter,
        efficiency=efficiency,
        attenuation=att,
        expected_prompts=expected,
        activity_scale=scale,
        regions={k: v.cpu() for k, v in phantom.regions.items()},
        contrast=dict(phantom.contrast),
        listmode=listmode,
    )
