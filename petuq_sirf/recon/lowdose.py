"""Simulated low-dose training/validation sets for learned reconstruction, and a batched model.

Every phantom gets its own attenuation, normalisation, randoms and scatter (``simulate`` with a
shared geometric projector), so :class:`BatchedAcquisition` carries per-item ``m`` and ``b``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from petuq_sirf.operators.acquisition import AcquisitionModel, AcquisitionModelBase
from petuq_sirf.operators.base import FunctionOperator, LinearOperator
from petuq_sirf.recon.em import em_update
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout
from petuq_sirf.simulation.phantoms import random_ellipses_phantom
from petuq_sirf.simulation.simulate import SimulationConfig, geometric_model, simulate


class BatchedAcquisition(AcquisitionModelBase):
    """``ybar = m * G x + b`` with per-item ``m``, ``b`` of shape ``(B, sinograms, views, tangential)``.

    ``geometric`` is any acquisition model; only its geometric part ``G`` is used (its projector is shared).
    Images are ``(B, z, y, x)``. Implements forward/direct/adjoint/sensitivity like the protocol.
    """

    def __init__(self, geometric: AcquisitionModel, multiplicative: torch.Tensor, additive: torch.Tensor):
        self.geometric_model = geometric
        self.image_shape = geometric.image_shape
        self.data_shape = geometric.data_shape
        self.voxel_size_mm = geometric.voxel_size_mm
        self.device = geometric.device
        self.dtype = getattr(geometric, "dtype", torch.float32)
        self._set_terms(multiplicative, additive, batched=True)

    def item(self, index: int) -> AcquisitionModel:
        """The acquisition model of batch item ``index`` (the shared projector with that item's terms)."""
        return self.geometric_model.with_terms(self._m[index], self._b[index])

    def geometric(self, x: torch.Tensor) -> torch.Tensor:
        return self.geometric_model.geometric(x)

    def geometric_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.geometric_model.geometric_adjoint(y)

    def linear_operator(self) -> LinearOperator:
        """The linear part on the whole batch: images ``(B, z, y, x)`` to sinograms ``(B, ...)``."""
        batch = tuple(self._m.shape[:-3])
        return FunctionOperator(
            self.direct, self.adjoint, batch + tuple(self.image_shape), tuple(self._m.shape), self.dtype, self.device
        )


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

    def model(self, geometric: AcquisitionModel) -> BatchedAcquisition:
        return BatchedAcquisition(geometric, self.multiplicative, self.additive)


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
    geometric: AcquisitionModel | None = None,
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
