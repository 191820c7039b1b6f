"""Plug-and-play ADMM for the PET Poisson likelihood with positivity (after Sureau et al. 2023).

Iteration (scaled form, ``v = z - u``)::

    x <- argmin_{x >= 0}  sum(ybar(x) - y log ybar(x)) + rho/2 ||x - (z - u)||^2
    z <- c D((x + u) / c)            (the denoiser on images normalised by the scale c)
    u <- u + x - z

The x-update is solved by De Pierro-type surrogate iterations: the EM surrogate of the negative
log-likelihood is separable, ``s_j (x_j - x_em_j log x_j)``, and adding the quadratic gives per
voxel ``rho x^2 + (s - rho v) x - s x_em = 0`` whose positive root (:func:`em_quadratic_fusion`) is
the next iterate. Each inner step decreases the x-subproblem objective (an MM scheme); we warm start
from the previous x.

Choice of ``rho``: ``rho = rho_rel * mean(s) / c`` with ``c`` the mean of the initial image. The
curvature of the negative log-likelihood at the solution is about ``s_j / x_j``, so ``rho_rel = 1``
weighs the proximity term like the data at average activity; ``rho_rel`` is then independent of the
count level and image units. Larger ``rho_rel`` trusts the denoiser more; the default 0.3 gave the
lowest NRMSE on a held-out low-dose test-2d ellipse phantom (0.3, 1, 3 tried) and converges fastest.

Convergence: ADMM with a denoiser in place of a proximal map is Douglas-Rachford splitting; when
``D`` is firmly nonexpansive (``2D - I`` nonexpansive, see :mod:`petuq_sirf.recon.nonexpansive`) it
is the resolvent of a maximally monotone operator and the iteration converges for any ``rho``. We log
the fixed-point residual ``||x_{k+1} - x_k||`` (image units) per iteration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from petuq_sirf.inference.weight_posterior import PosteriorImage, WeightPosterior, call_with
from petuq_sirf.operators.acquisition import AcquisitionModel, check_data
from petuq_sirf.recon.em import em_update, osem

_TINY = 1e-12


def em_quadratic_fusion(x_em: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Positive minimiser of ``x - x_em log x + weight/2 (x - target)^2`` per voxel.

    ``weight = rho / s`` (``s`` the sensitivity), broadcastable; ``weight = 0`` gives ``x_em``;
    ``weight = inf`` (zero sensitivity) gives ``max(target, 0)``. ``target`` may be negative.
    """
    weight = torch.as_tensor(weight, dtype=x_em.dtype, device=x_em.device)
    finite = torch.isfinite(weight)
    b = torch.where(finite, weight, torch.zeros_like(weight))
    a = 1 - b * target
    disc = torch.sqrt((a * a + 4 * b * x_em).clamp_min(1e-20))  # floored: finite gradients
    pos = 2 * x_em / (a + disc).clamp_min(_TINY)
    neg = (disc - a) / (2 * b).clamp_min(_TINY)
    x = torch.where(a > 0, pos, neg)
    return torch.where(finite, x, target.clamp_min(0))


@dataclass
class PnPADMMConfig:
    """Settings of :func:`pnp_admm`.

    Attributes:
        num_iterations: outer ADMM iterations.
        rho_rel: penalty relative to ``mean(sensitivity) / c`` (see the module docstring).
        inner_iterations: De Pierro surrogate steps per x-update (warm started).
        init_iterations: OSEM iterations (``init_subsets`` subsets) for the initial image and scale.
        init_subsets: OSEM subsets of the initialisation (reduced to the number of views if needed).
    """

    num_iterations: int = 100
    rho_rel: float = 0.3
    inner_iterations: int = 5
    init_iterations: int = 2
    init_subsets: int = 8

    def __post_init__(self) -> None:
        if self.num_iterations < 1 or self.inner_iterations < 1:
            raise ValueError("num_iterations and inner_iterations must be >= 1")
        if not self.rho_rel > 0:
            raise ValueError(f"rho_rel must be > 0, got {self.rho_rel}")


@dataclass
class PnPResult:
    """``image`` the last x ``(z, y, x)``; ``z`` the last denoised image; ``residuals`` ``||x_{k+1} - x_k||``."""

    image: torch.Tensor
    z: torch.Tensor
    residuals: list[float] = field(default_factory=list)
    rho: float = 0.0
    scale: float = 1.0


def initial_image(model: AcquisitionModel, y: torch.Tensor, iterations: int = 2, subsets: int = 8) -> torch.Tensor:
    """A short OSEM image used as initial point and for the image scale ``c``."""
    subsets = max(1, min(subsets, model.data_shape[1]))
    return osem(model, y, iterations, subsets).image


def volume_mean_scale(x: torch.Tensor) -> torch.Tensor:
    """Scalar scale ``c``: the mean over the trailing ``(z, y, x)`` axes (keepdim), floored."""
    return x.mean(dim=(-3, -2, -1), keepdim=True).clamp_min(_TINY)


def pnp_admm(
    model: AcquisitionModel,
    y: torch.Tensor,
    denoiser: Callable[[torch.Tensor], torch.Tensor],
    config: PnPADMMConfig | None = None,
    x0: torch.Tensor | None = None,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> PnPResult:
    """PnP-ADMM reconstruction of prompts ``y`` (shape ``model.data_shape``) with ``denoiser``.

    ``denoiser`` maps normalised images ``(z, y, x)`` (mean about 1) to denoised ones.
    ``x0``: initial image (default: short OSEM). Runs without autograd.
    """
    cfg = config or PnPADMMConfig()
    y = check_data(y, model.data_shape, "measured prompts").to(model.device)
    with torch.no_grad():
        if x0 is None:
            x0 = initial_image(model, y, cfg.init_iterations, cfg.init_subsets)
        x = torch.as_tensor(x0, dtype=torch.float32, device=model.device).clamp_min(0).clone()
        if tuple(x.shape) != tuple(model.image_shape):
            raise ValueError(f"initial image has shape {tuple(x.shape)}, expected {model.image_shape}")
        sens = model.sensitivity()
        c = volume_mean_scale(x)
        rho = cfg.rho_rel * float(sens.mean()) / float(c)
        weight = torch.where(sens > 0, rho / sens.clamp_min(_TINY), torch.full_like(sens, float("inf")))
        z = x.clone()
        u = torch.zeros_like(x)
        result = PnPResult(x, z, rho=rho, scale=float(c))
        for it in tqdm(
            range(cfg.num_iterations), desc="PnP-ADMM iterations", leave=False, disable=not progress or None
        ):
            x_prev = x
            v = z - u
            for _ in range(cfg.inner_iterations):
                x = em_quadratic_fusion(em_update(model, y, x, sens), v, weight)
            z = c * denoiser((x + u) / c)
            u = u + x - z
            result.residuals.append(float((x - x_prev).norm()))
            if callback is not None:
                callback(it, x)
    result.image, result.z = x, z
    return result


@dataclass
class PnPPosterior:
    """Fixed points of PnP-ADMM for denoisers drawn from a weight posterior.

    ``summary``: mean/std/samples ``(S, z, y, x)`` of the fixed points (``aleatoric_std`` is zero;
    with ``bootstrap`` the data resampling is part of the spread). ``residuals`` per sample;
    ``jacobian_norms``: ``||J_{2D-I}||`` of each accepted draw at the initial image; ``rejected``:
    draws above ``max_jacobian_norm``.
    """

    summary: PosteriorImage
    residuals: list[list[float]]
    jacobian_norms: list[float]
    rejected: int = 0


def pnp_admm_posterior(
    model: AcquisitionModel,
    y: torch.Tensor,
    net: torch.nn.Module,
    posterior: WeightPosterior,
    num_samples: int = 8,
    config: PnPADMMConfig | None = None,
    bootstrap: bool = False,
    max_jacobian_norm: float | None = 1.05,
    jacobian_iterations: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> PnPPosterior:
    """Run PnP-ADMM once per weight draw of ``net`` and summarise the fixed points.

    ``bootstrap``: each run also gets resampled data ``y_b ~ Poisson(y)`` (binned form of the
    list-mode bootstrap with Poisson(1) event weights), adding the data-driven spread.
    ``max_jacobian_norm``: draws whose estimated ``||J_{2D-I}||`` at the normalised initial image
    exceeds it are rejected and redrawn (the posterior restricted to firmly nonexpansive
    denoisers, up to the tolerance; ``jacobian_iterations`` power iterations); None accepts every
    draw. At most ``4 num_samples`` draws.
    """
    from petuq_sirf.recon.nonexpansive import jacobian_spectral_norm

    if num_samples < 2:
        raise ValueError(f"need at least 2 posterior samples for a spread, got {num_samples}")
    cfg = config or PnPADMMConfig()
    y = check_data(y, model.data_shape, "measured prompts").to(model.device)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x0 = initial_image(model, y, cfg.init_iterations, cfg.init_subsets)
    probe = (x0 / volume_mean_scale(x0)).unsqueeze(0)
    fixed_points, residuals, norms, rejected = [], [], [], 0
    bar = tqdm(total=num_samples, desc="PnP-ADMM posterior samples", unit="sample", disable=not progress or None)
    for _ in range(4 * num_samples):
        if len(fixed_points) == num_samples:
            break
        weights = posterior.sample(gen)
        weights = {k: v.to(model.device) for k, v in weights.items()}

        def denoiser(v, w=weights):
            return call_with(net, w, v)

        norm = float(jacobian_spectral_norm(lambda v: 2 * denoiser(v) - v, probe, jacobian_iterations, seed=seed)[0])
        if max_jacobian_norm is not None and norm > max_jacobian_norm:
            rejected += 1
            continue
        yb = torch.poisson(y.cpu().double(), generator=gen).float().to(model.device) if bootstrap else y
        with torch.no_grad():
            res = pnp_admm(model, yb, denoiser, cfg, x0=None if bootstrap else x0, progress=progress)
        fixed_points.append(res.image)
        residuals.append(res.residuals)
        norms.append(norm)
        bar.update(1)
    bar.close()
    if len(fixed_points) < 2:
        raise RuntimeError(
            f"only {len(fixed_points)} of {4 * num_samples} posterior draws had ||J_(2D-I)|| <= {max_jacobian_norm}"
        )
    s = torch.stack(fixed_points)
    std = s.std(0)
    summary = PosteriorImage(s.mean(0), std, std, torch.zeros_like(std), s)
    return PnPPosterior(summary, residuals, norms, rejected)
