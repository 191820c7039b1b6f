"""Simulated low-dose training/validation sets for learned reconstruction, and a batched model.

Every phantom gets its own attenuation, normalisation, randoms and scatter (``simulate`` with a
shared geometric projector), so :class:`BatchedAcquisition` carries per-item ``m`` and ``b``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel
from petuq_sirf.recon.em import em_update
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout
from petuq_sirf.simulation.phantoms import random_ellipses_phantom
from petuq_sirf.simulation.simulate import SimulationConfig, simulate


class BatchedAcquisition:
    """``ybar = m * G x + b`` with per-item ``m``, ``b`` of shape ``(B, sinograms, views, tangential)``.

    ``geometric`` is a model without terms (``m = 1``, ``b = 0``) whose projector is shared.
    Images are ``(B, z, y, x)``. Implements forward/direct/adjoint/sensitivity like the protocol.
    """

    def __init__(self, geometric: EmbeddedAcquisitionModel, multiplicative: torch.Tensor, additive: torch.Tensor):
        if multiplicative.shape != additive.shape or tuple(multiplicative.shape[-3:]) != tuple(geometric.data_shape):
            raise ValueError(
                f"terms must both have shape (B, *{geometric.data_shape}), got "
                f"{tuple(multiplicative.shape)} and {tuple(additive.shape)}"
            )
        self.geometric = geometric
        self.m = multiplicative.to(geometric.device, geometric.dtype)
        self.b = additive.to(geometric.device, geometric.dtype)
        self.image_shape = geometric.image_shape
        self.data_shape = geometric.data_shape
        self.voxel_size_mm = geometric.voxel_size_mm
        self.device = geometric.device
        self._sens: torch.Tensor | None = None

    def direct(self, x: torch.Tensor) -> torch.Tensor:
        return self.m * self.geometric.geometric(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.direct(x) + self.b

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.geometric.adjoint(self.m * y)

    def sensitivity(self) -> torch.Tensor:
        if self._sens is None:
            self._sens = self.adjoint(torch.ones_like(self.m))
        return self._sens


@dataclass
class LowDoseConfig:
    """Simulated set: random-ellipse phantoms at ``true_counts``; initial images by ``init_iterations`` MLEM.

    ``lesion_probability`` 0 gives a training set without lesions (for the out-of-distribution check).
    """

    num_phantoms: int = 32
    true_counts: float = 5e4
    lesion_probability: float = 0.0
    psf_fwhm_mm: float = 4.0
    init_iterations: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_phantoms < 1 or not self.true_counts > 0 or self.init_iterations < 1:
            raise ValueError("num_phantoms >= 1, true_counts > 0 and init_iterations >= 1 are required")


@dataclass
class LowDoseSet:
    """Images ``(N, z, y, x)``, sinograms ``(N, sinograms, views, tangential)``; ``regions`` per item."""

    truth: torch.Tensor
    prompts: torch.Tensor
    multiplicative: torch.Tensor
    additive: torch.Tensor
    init: torch.Tensor
    regions: list[dict[str, torch.Tensor]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.truth.shape[0]

    def select(self, index: torch.Tensor | list[int]) -> LowDoseSet:
        idx = torch.as_tensor(index, dtype=torch.long)
        return LowDoseSet(
            self.truth[idx],
            self.prompts[idx],
            self.multiplicative[idx],
            self.additive[idx],
            self.init[idx],
            [self.regions[i] for i in idx.tolist()] if self.regions else [],
        )

    def model(self, geometric: EmbeddedAcquisitionModel) -> BatchedAcquisition:
        return BatchedAcquisition(geometric, self.multiplicative, self.additive)


def geometric_model(
    layout: SinogramLayout, image: ImageGeometry, psf_fwhm_mm: float = 4.0, **kwargs
) -> EmbeddedAcquisitionModel:
    """A model without multiplicative/additive terms (shared projector for batches)."""
    return EmbeddedAcquisitionModel(layout, image, psf_fwhm_mm=psf_fwhm_mm, **kwargs)


def batched_mlem(
    model: BatchedAcquisition, y: torch.Tensor, iterations: int, x0: torch.Tensor | None = None
) -> torch.Tensor:
    """MLEM on a batch (``y`` ``(B, ...)``), from ones unless ``x0`` is given."""
    sens = model.sensitivity()
    x = torch.ones_like(sens) if x0 is None else x0.clone()
    with torch.no_grad():
        for _ in range(iterations):
            x = em_update(model, y, x, sens)
    return x


def make_low_dose_set(
    layout: SinogramLayout,
    image: ImageGeometry,
    config: LowDoseConfig | None = None,
    geometric: EmbeddedAcquisitionModel | None = None,
) -> LowDoseSet:
    """Simulate ``config.num_phantoms`` random-ellipse acquisitions (seeds ``seed, seed + 1, ...``)."""
    cfg = config or LowDoseConfig()
    geometric = geometric or geometric_model(layout, image, cfg.psf_fwhm_mm)
    rng = np.random.default_rng(cfg.seed)
    truth, prompts, mult, add, regions = [], [], [], [], []
    for i in range(cfg.num_phantoms):
        phantom = random_ellipses_phantom(image, rng, lesion_probability=cfg.lesion_probability)
        sim = simulate(
            phantom,
            layout,
            SimulationConfig(true_counts=cfg.true_counts, psf_fwhm_mm=cfg.psf_fwhm_mm, seed=cfg.seed * 100003 + i),
            model=geometric,
        )
        truth.append(sim.truth)
        prompts.append(sim.prompts.cpu())
        mult.append(sim.multiplicative.cpu())
        add.append(sim.additive.cpu())
        regions.append(sim.regions)
    data = LowDoseSet(
        torch.stack(truth), torch.stack(prompts), torch.stack(mult), torch.stack(add), torch.empty(0), regions
    )
    data.init = batched_mlem(data.model(geometric), data.prompts.to(geometric.device), cfg.init_iterations).cpu()
    return data
