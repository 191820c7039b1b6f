"""Predictable estimators for the confidence sets: callables ``(model_past, counts_past) -> image``.

``model_past`` is the acquisition model of the part of the scan seen so far (its terms scaled by
that share), so every estimator returns an image in the units of the full-scan model. Any method
works (the coverage does not depend on it); better predictions give narrower sets.
"""

from __future__ import annotations

from pathlib import Path

import torch

from petuq_sirf.confidence.sets import Estimator
from petuq_sirf.operators.acquisition import AcquisitionModel
from petuq_sirf.recon.em import osem
from petuq_sirf.recon.map_rdp import map_rdp
from petuq_sirf.recon.rdp import RelativeDifferencePrior

ESTIMATORS = ("osem", "map-rdp", "unrolled", "denoiser")


def _start(model: AcquisitionModel, y: torch.Tensor) -> torch.Tensor:
    """A uniform image with the data's total counts (inside the field of view)."""
    sens = model.sensitivity()
    level = max(float(y.sum() - model.additive.sum()), 1e-6 * float(y.sum()) + 1e-12) / max(float(sens.sum()), 1e-12)
    return torch.where(sens > 0, torch.full_like(sens, level), torch.zeros_like(sens))


def osem_estimator(iterations: int = 4, subsets: int = 8) -> Estimator:
    """OSEM (``iterations`` x ``subsets``) of the counts so far."""

    def estimate(model: AcquisitionModel, y: torch.Tensor) -> torch.Tensor:
        return osem(model, y, iterations, subsets, x0=_start(model, y)).image

    return estimate


def map_rdp_estimator(strength: float = 0.01, iterations: int = 30, osem_iterations: int = 2) -> Estimator:
    """MAP with the relative difference prior (count-invariant strength, see
    :meth:`~petuq_sirf.recon.rdp.RelativeDifferencePrior.scaled_for`), started from OSEM."""

    def estimate(model: AcquisitionModel, y: torch.Tensor) -> torch.Tensor:
        x0 = osem(model, y, osem_iterations, 8, x0=_start(model, y)).image
        prior = RelativeDifferencePrior.scaled_for(model.sensitivity(), x0, strength)
        return map_rdp(model, y, prior, iterations, x0=x0).image

    return estimate


def unrolled_estimator(net) -> Estimator:
    """An unrolled FBSEM network (point weights), e.g. the shipped one for test-2d
    (``petuq_sirf.recon.weights.load_network("unrolled")``), started from 10 MLEM iterations."""
    from petuq_sirf.recon.unrolled import predict_unrolled

    def estimate(model: AcquisitionModel, y: torch.Tensor) -> torch.Tensor:
        x0 = osem(model, y, 10, 1, x0=_start(model, y)).image
        return predict_unrolled(net, model, y, x0, None, 1, aleatoric=False).mean.clamp_min(0)

    return estimate


def denoiser_estimator(checkpoint: str | Path, num_samples: int = 8) -> Estimator:
    """OSEM (4 x 8, like the denoisers' training data) followed by a Bayesian denoiser's predictive mean."""
    from petuq_sirf.bayes.checkpoint import load_denoiser

    den = load_denoiser(checkpoint)

    def estimate(model: AcquisitionModel, y: torch.Tensor) -> torch.Tensor:
        x = osem(model, y, 4, 8, x0=_start(model, y)).image
        post = den.predict(x.cpu().reshape(-1, *x.shape[-2:]), num_samples)
        return post.predictive_mean.reshape(x.shape).clamp_min(0).to(x)

    return estimate


def constant_estimator(image: torch.Tensor) -> Estimator:
    """Ignores the data and returns ``image`` (a deliberately bad estimator, for validation)."""

    def estimate(model: AcquisitionModel, y: torch.Tensor) -> torch.Tensor:
        return image.to(model.device)

    return estimate


def make_estimator(name: str, **options) -> Estimator:
    """An estimator by name: ``osem``, ``map-rdp``, ``unrolled`` (``net=``), ``denoiser`` (``checkpoint=``)."""
    if name == "osem":
        return osem_estimator(options.get("iterations", 4), options.get("subsets", 8))
    if name == "map-rdp":
        return map_rdp_estimator(options.get("strength", 0.01))
    if name == "unrolled":
        if options.get("net") is None:
            raise ValueError("the unrolled estimator needs a network (net=...)")
        return unrolled_estimator(options["net"])
    if name == "denoiser":
        ckpt = options.get("checkpoint")
        if not ckpt:
            raise ValueError("--estimator denoiser needs --denoiser-checkpoint DIR (from petuq train-denoiser)")
        return denoiser_estimator(ckpt)
    raise ValueError(f"unknown estimator {name!r}; choose from {', '.join(ESTIMATORS)}")
