"""Discrepancy-stopped EM refinement: fit the data as well as Poisson noise allows, and no better.

An image whose expected data ``ybar = A x + b`` are the truth's gives a Poisson deviance
``D = sum 2 (y log(y / ybar) - y + ybar)`` close to its expectation ``E[D | ybar]`` (about one per bin at
high counts, less in bins with a mean below a few counts). An over-smoothed image fits worse: its deviance
exceeds the expectation by ``sum (ybar - ybar_true)^2 / ybar`` roughly, and at high counts the excess is many
standard deviations. :func:`refine_to_discrepancy` runs MLEM iterations from a given image (for example a
learned network's mean) until ``z = (D - E) / sqrt(2 E) <= threshold``, the discrepancy principle for Poisson
data (Bertero et al. 2010) used as an EM stopping rule (in the spirit of Veklerov & Llacer 1987). It uses the
likelihood alone, no anatomy: where the data cannot tell (low counts), ``z`` starts at or below the threshold
and the image is returned unchanged.

With the default threshold 0 only the sign of ``D - E`` matters, so the approximate scale ``sqrt(2 E)`` of
``z`` does not change where it stops.

The rule trusts the model: with wrong normalisation, attenuation, randoms or scatter part of the deviance is
model error, which no image should fit, and the refinement would fit it with noise. :func:`model_error_z`
measures that part (a generalised discrepancy principle): the ``z`` of an unregularised OSEM fit (20 iterations x
8 subsets) minus the ``z`` of the same fit to data simulated from that fit's own expected data (a parametric
bootstrap, for which the model is exact). With a correct model the two agree (excess within about +-3 of 0 on the
calibration phantoms); with an additive term 20 % too high or 10 % per-bin normalisation noise the excess is 2-4
at 5e4-1e5 trues (means) and 40-45 at 1e6. :func:`refine_posterior_mean` with ``check_model_fit`` stops at
``z <= threshold + max(excess, 0)``, and does not refine at all when even the unregularised fit leaves ``z > 0``
(``docs/heldout_uq.md``, "model mismatch").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from petuq_sirf.recon.em import em_update, osem
from petuq_sirf.recon.likelihood import poisson_deviance

MODEL_FIT_ITERATIONS = 20  # OSEM iterations x subsets of the model-adequacy fit (model_fit_z)
MODEL_FIT_SUBSETS = 8
DEFAULT_MAX_ITERATIONS = 60  # MLEM iterations at most (held-out test runs took at most 57 in 2D, 56 in 3D)

# below this mean the expected deviance is summed over the Poisson pmf; above, the expansion is exact to ~1e-5
_EXACT_BELOW = 30.0
_PMF_TERMS = 150  # k = 0..149 holds all but ~1e-30 of the mass for means below 30


def expected_poisson_deviance(ybar: torch.Tensor) -> torch.Tensor:
    """``E[poisson_deviance(Y, ybar)]`` for ``Y ~ Poisson(ybar)``, per bin (same shape as ``ybar``).

    Exact (a sum over the pmf in float64) for means below 30; ``1 + 1/(6 mu) + 1/(6 mu^2)`` above.
    Tends to 0 as the mean does (a bin with no expected counts cannot be misfit).
    """
    mu = ybar.clamp_min(1e-12)
    out = 1 + 1 / (6 * mu) + 1 / (6 * mu**2)
    small = mu < _EXACT_BELOW
    if bool(small.any()):
        m = mu[small].double()[:, None]
        k = torch.arange(_PMF_TERMS, dtype=torch.float64, device=mu.device)
        pmf = torch.exp(k * torch.log(m) - m - torch.lgamma(k + 1))
        dev = 2 * torch.where(k > 0, k * torch.log(k.clamp_min(1) / m) - k + m, m)
        out = out.clone()
        out[small] = (pmf * dev).sum(dim=1).to(out.dtype)
    return out


def discrepancy_z(y: torch.Tensor, ybar: torch.Tensor) -> torch.Tensor:
    """``(D - E[D]) / sqrt(2 E[D])`` over the trailing three (data) axes: > 0 when ``ybar`` fits worse than noise."""
    d = poisson_deviance(y, ybar).sum(dim=(-3, -2, -1))
    e = expected_poisson_deviance(ybar).sum(dim=(-3, -2, -1))
    return (d - e) / torch.sqrt(2 * e.clamp_min(1e-12))


def model_fit_z(
    model, y: torch.Tensor, iterations: int = MODEL_FIT_ITERATIONS, subsets: int = MODEL_FIT_SUBSETS
) -> torch.Tensor:
    """:func:`discrepancy_z` of an unregularised OSEM fit (``iterations`` x ``subsets``, from a uniform image) per item.

    ``model``: one acquisition model, or a :class:`~petuq_sirf.recon.lowdose.BatchedAcquisition` (item ``i`` of
    ``y`` with model item ``i``); ``y``: prompts ``(..., sinograms, views, tangential)``. With a correct model this
    fit over-fits the noise (``z`` well below 0); ``z > 0`` means no image
    explains the data to within Poisson noise: the model (normalisation, attenuation, randoms, scatter) is off.
    """
    return _model_fits(model, y, iterations, subsets)[0]


def _model_fits(model, y: torch.Tensor, iterations: int, subsets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, expected data)`` of the unregularised OSEM fit of every item of ``y``."""
    if tuple(y.shape[-3:]) != tuple(model.data_shape):
        raise ValueError(f"prompts of shape {tuple(y.shape)} do not match the model's data {tuple(model.data_shape)}")
    flat = y.reshape(-1, *y.shape[-3:])
    models = [model.item(i) for i in range(len(flat))] if hasattr(model, "item") else [model] * len(flat)
    fits = [m.forward(osem(m, v, iterations, subsets).image) for m, v in zip(models, flat)]
    zs = torch.stack([discrepancy_z(v, f) for v, f in zip(flat, fits)]).reshape(y.shape[:-3])
    return zs, torch.stack(fits).reshape(y.shape)


def model_error_z(
    model,
    y: torch.Tensor,
    seed: int = 0,
    iterations: int = MODEL_FIT_ITERATIONS,
    subsets: int = MODEL_FIT_SUBSETS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fit_z, excess)`` per item: :func:`model_fit_z` of the data, and its excess over the same fit's ``z`` on
    data simulated from the fit's expected data (``Poisson``, generator seeded with ``seed``), where the model is
    exact by construction. ``excess`` estimates the part of the misfit (in ``z`` units) that model error causes;
    within about +-3 of 0 for a correct model."""
    fit_z, fitted = _model_fits(model, y, iterations, subsets)
    simulated = torch.poisson(fitted.double().cpu(), generator=torch.Generator().manual_seed(seed)).to(y)
    sim_z = _model_fits(model, simulated, iterations, subsets)[0]
    return fit_z, fit_z - sim_z


@dataclass
class DiscrepancyRefinement:
    """Result of :func:`refine_to_discrepancy`; per-image tensors have the batch shape of the input.

    ``image``: the refined images ``(..., z, y, x)``; ``iterations``: MLEM iterations each image got;
    ``z_start`` / ``z_end``: the discrepancy statistic before and after; ``reached``: whether
    ``z_end <= threshold`` (False: stopped at ``max_iterations`` with the data still under-fit, or skipped);
    ``skipped``: items left unrefined because the model does not fit their data (``model_fit_z > 0``);
    ``model_fit_z`` / ``model_error_z``: that check's statistics (:func:`model_error_z`; ``None`` when not
    checked); ``threshold``: the stop threshold (per item when the model error raised it).
    """

    image: torch.Tensor
    iterations: torch.Tensor
    z_start: torch.Tensor
    z_end: torch.Tensor
    reached: torch.Tensor
    threshold: float | torch.Tensor
    skipped: torch.Tensor | None = None
    model_fit_z: torch.Tensor | None = None
    model_error_z: torch.Tensor | None = None


def refine_to_discrepancy(
    model,
    y: torch.Tensor,
    x: torch.Tensor,
    threshold: float | torch.Tensor = 0.0,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    skip: torch.Tensor | None = None,
) -> DiscrepancyRefinement:
    """MLEM from ``x`` until the discrepancy ``z`` (:func:`discrepancy_z`) is at most ``threshold``.

    ``model``: an acquisition model (or a :class:`~petuq_sirf.recon.lowdose.BatchedAcquisition`) with
    ``forward`` / ``adjoint`` / ``sensitivity``; ``y``: prompts ``(..., sinograms, views, tangential)``;
    ``x``: images ``(..., z, y, x)`` (a batch is refined item by item: each stops on its own). ``x`` is
    not modified. ``threshold`` 0 (default) stops at the first iterate that fits no worse than Poisson noise;
    chosen on calibration phantoms of the in-family anatomy (``docs/heldout_uq.md``). ``skip``: a boolean per
    item (batch shape); those items are returned unchanged with ``reached`` False. ``threshold`` may also be a
    tensor of the batch shape (one threshold per item).
    """
    if not bool(torch.isfinite(torch.as_tensor(threshold, dtype=torch.float64)).all()):
        raise ValueError(f"discrepancy threshold must be finite, got {threshold}")
    if max_iterations < 0:
        raise ValueError(f"max_iterations must be >= 0, got {max_iterations}")
    if tuple(x.shape[-3:]) != tuple(model.image_shape):
        raise ValueError(f"image has shape {tuple(x.shape)}, expected (..., {', '.join(map(str, model.image_shape))})")
    if tuple(y.shape[-3:]) != tuple(model.data_shape) or y.shape[:-3] != x.shape[:-3]:
        raise ValueError(f"prompts of shape {tuple(y.shape)} do not match images {tuple(x.shape)} and the model's data")
    if (x < 0).any() or not torch.isfinite(x).all():
        raise ValueError("image to refine must be finite and >= 0")
    with torch.no_grad():
        sens = model.sensitivity()
        x = x.clone()
        z = discrepancy_z(y, model.forward(x))
        z_start = z.clone()
        iterations = torch.zeros(z.shape, dtype=torch.long, device=z.device)
        active = z > threshold
        skipped = torch.zeros_like(active) if skip is None else torch.as_tensor(skip, device=z.device).bool()
        if skipped.shape != active.shape:
            raise ValueError(f"skip has shape {tuple(skipped.shape)}, expected the batch shape {tuple(active.shape)}")
        active = active & ~skipped
        for _ in range(max_iterations):
            if not bool(active.any()):
                break
            x_new = em_update(model, y, x, sens)
            grow = active.reshape(*active.shape, 1, 1, 1)
            x = torch.where(grow, x_new, x)
            iterations += active.long()
            z = torch.where(active, discrepancy_z(y, model.forward(x)), z)
            active = active & (z > threshold)
    thr = float(threshold) if not isinstance(threshold, torch.Tensor) else threshold
    return DiscrepancyRefinement(x, iterations, z_start, z, (z <= threshold) & ~skipped, thr, skipped)


def refine_posterior_mean(
    model,
    y: torch.Tensor,
    summary,
    threshold: float = 0.0,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    check_model_fit: bool = False,
    model_error: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """A posterior summary (:class:`~petuq_sirf.inference.weight_posterior.PosteriorImage`) moved to the refined mean.

    The mean is refined by :func:`refine_to_discrepancy`; every sample is shifted by the same amount (the
    refinement is a bias correction, the spread is the network's) and clipped at 0; the std fields are kept.
    ``check_model_fit``: stop at ``threshold + max(excess, 0)`` with the model
    error's ``excess`` of :func:`model_error_z`, and leave unrefined the items whose data even the unregularised
    fit cannot explain (its ``z`` above 0). ``model_error``: :func:`model_error_z` of ``(model, y)`` when already
    computed (several networks refined on the same data); given, it implies ``check_model_fit``.
    Returns ``(summary, refinement)``.
    """
    if not check_model_fit and model_error is None:
        ref = refine_to_discrepancy(model, y, summary.mean, threshold, max_iterations)
    else:
        fit_z, excess = model_error if model_error is not None else model_error_z(model, y)
        per_item = threshold + excess.clamp_min(0).to(summary.mean)
        ref = refine_to_discrepancy(model, y, summary.mean, per_item, max_iterations, fit_z > 0)
        ref.model_fit_z, ref.model_error_z = fit_z, excess
    shift = ref.image - summary.mean
    return replace(summary, mean=ref.image, samples=(summary.samples + shift).clamp_min(0)), ref
