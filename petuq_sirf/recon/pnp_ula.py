"""PnP-ULA: Langevin sampling of the PET posterior with a learned denoiser as the prior (after
Laumont, De Bortoli, Almansa, Delon, Durmus & Pereyra, SIAM J. Imaging Sci. 15(2) 2022).

Target on ``x >= 0`` (image units)::

    log pi(x) = sum_i (y_i log ybar_i(x) - ybar_i(x)) + alpha log p_eps(x / c)
    grad      = A^T (y / ybar(x) - 1) + alpha / (eps c^2) (c D(x / c) - x)

``ybar = m G x + b`` (``A^T`` = ``model.adjoint``), ``c`` a fixed scalar image scale (the mean of
the initial image; the denoiser works on images of mean about 1). The prior score is Tweedie's
identity ``grad log p_eps(u) = (D_eps(u) - u) / eps`` for an MMSE denoiser at noise variance
``eps = denoiser_sigma^2`` (normalised units). The shipped denoiser is blind (trained over noise
levels 0-0.3), so for it ``alpha / eps`` acts as one regularisation strength.

Choices (documented in docs/reconstruction_uq.md):

* **Positivity**: reflected ULA, ``x <- |x|`` after each step (no change of variables, so the
  denoiser prior is used on the image itself); the chain samples ``pi`` restricted to ``x >= 0``.
* **Poisson gradient near zero**: ``y / ybar`` is not Lipschitz as ``ybar -> 0``. We keep a strictly
  positive background: ``b_eta = max(b, eta)`` with ``eta = background_floor_rel * mean(ybar(x_init))``
  (a truncated likelihood; it changes nothing where the randoms + scatter estimate is above
  ``eta``, which is every bin of a simulated or measured acquisition with randoms). On ``x >= 0``
  then ``ybar >= b_eta`` and ``-grad^2 log p(y|x) = A^T diag(y / ybar^2) A <= A^T diag(y / b_eta^2) A``,
  so ``L_y = ||M^(1/2) A^T diag(y / b_eta^2) A M^(1/2)||`` (power iteration) bounds the likelihood's
  Lipschitz constant on the whole support.
* **Prior Lipschitz constant**: ``D`` firmly nonexpansive (the shipped denoiser is trained for it,
  :mod:`petuq_sirf.recon.nonexpansive`) implies ``I - D`` nonexpansive, so the prior score is
  ``alpha / (eps c^2)``-Lipschitz in image units; ``L_p = alpha max(M) / (eps c^2)``.
* **Preconditioner** (fixed for the whole chain, so the target is unchanged):
  ``M = 1 / (s / max(x_init, floor c) + alpha / (eps c^2))``, ``s`` the sensitivity: the inverse of
  the diagonal curvature bound (the EM preconditioner ``x / s`` of the data term, whose Fisher
  information at ``x_init`` then has eigenvalues <= 1 up to the ratio ``y / ybar``, plus the
  prior's bound), so that ``L_p <= 1`` and neither term forces a tiny step on the other's voxels.
* **Step**: ``delta = step_fraction / (L_y + L_p)`` with ``step_fraction = 1/3`` (Laumont et al.'s
  bound without their projection term, which the reflection replaces). ``lipschitz="local"``
  replaces ``b_eta`` by ``ybar(x_init)`` in ``L_y`` (curvature at the initial image, not a bound on
  the support; larger steps, no guarantee).

* **Support** (optional): voxels outside a given mask (e.g. the body from the mu-map,
  :func:`body_support`) are held at zero. Without it, every voxel of the field of view has a
  positive posterior mean (reflection at zero, and the denoiser -- trained on zero-mean noise --
  does not pull reflected, positive noise back to zero), and since the likelihood fixes the total
  counts that activity is taken from the object.

The chains start from the PnP-ADMM fixed point with the same denoiser (close to the posterior mode).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from petuq_sirf.inference.langevin import (
    ChainCheckpoint,
    LangevinConfig,
    LangevinResult,
    langevin_sample,
    power_iteration,
)
from petuq_sirf.inference.weight_posterior import PosteriorImage
from petuq_sirf.operators.acquisition import AcquisitionModel, check_data
from petuq_sirf.recon.pnp_admm import PnPADMMConfig, pnp_admm, volume_mean_scale

_TINY = 1e-12


@dataclass(frozen=True)
class PnPULAConfig:
    """Settings of :func:`pnp_ula` (see the module docstring for the meaning of each choice).

    Attributes:
        num_samples: kept states per chain; burn_in / thinning: Langevin steps; num_chains: chains.
        alpha: prior weight; denoiser_sigma: ``sqrt(eps)`` in normalised units (mean-1 images).
        step_fraction: ``delta (L_y + L_p)``; lipschitz: ``"support"`` (bound on x >= 0) or ``"local"``.
        background_floor_rel: ``eta`` relative to the mean expected count of the initial image.
        preconditioner: ``"em"`` (default) or ``"none"`` (``M = 1``).
        activity_floor: floor of ``x_init / c`` in the EM preconditioner.
        init_admm_iterations: PnP-ADMM iterations of the initial image (0: short OSEM).
        seed: noise seed.
    """

    num_samples: int = 100
    burn_in: int = 1000
    thinning: int = 10
    num_chains: int = 4
    alpha: float = 1.0
    denoiser_sigma: float = 0.3
    step_fraction: float = 1.0 / 3.0
    lipschitz: str = "support"
    background_floor_rel: float = 1e-3
    preconditioner: str = "em"
    activity_floor: float = 0.3
    init_admm_iterations: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_chains < 1:
            raise ValueError(f"need at least one chain, got {self.num_chains}")
        if not (self.alpha >= 0 and self.denoiser_sigma > 0):
            raise ValueError("alpha must be >= 0 and denoiser_sigma > 0")
        if not 0 < self.step_fraction <= 2:
            raise ValueError(f"step_fraction must be in (0, 2], got {self.step_fraction}")
        if self.lipschitz not in ("support", "local"):
            raise ValueError(f"lipschitz must be 'support' or 'local', got {self.lipschitz!r}")
        if self.preconditioner not in ("em", "none"):
            raise ValueError(f"preconditioner must be 'em' or 'none', got {self.preconditioner!r}")
        if not (self.background_floor_rel > 0 and self.activity_floor > 0 and self.init_admm_iterations >= 0):
            raise ValueError("background_floor_rel and activity_floor must be > 0, init_admm_iterations >= 0")

    def langevin(self) -> LangevinConfig:
        return LangevinConfig(
            num_samples=self.num_samples, burn_in=self.burn_in, thinning=self.thinning, seed=self.seed
        )


@dataclass
class PnPULAResult:
    """``summary``: posterior mean/std/samples (``std`` is the posterior spread given the data);
    ``init`` the PnP-ADMM starting image; ``chain`` the raw :class:`LangevinResult`;
    ``settings``: step size, Lipschitz constants, scale, background floor, diagnostics."""

    summary: PosteriorImage
    init: torch.Tensor
    chain: LangevinResult
    settings: dict = field(default_factory=dict)


def body_support(mu_per_cm: torch.Tensor, dilation_voxels: int = 2, threshold_per_cm: float = 1e-3) -> torch.Tensor:
    """Support mask ``(z, y, x)``: voxels with ``mu > threshold`` dilated in-plane by ``dilation_voxels``."""
    mask = (torch.as_tensor(mu_per_cm) > threshold_per_cm).float()
    if dilation_voxels > 0:
        k = 2 * dilation_voxels + 1
        flat = mask.reshape(-1, 1, *mask.shape[-2:])
        flat = torch.nn.functional.max_pool2d(flat, k, stride=1, padding=dilation_voxels)
        mask = flat.reshape(mask.shape)
    return mask > 0


def poisson_score(
    model: AcquisitionModel, y: torch.Tensor, background: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> A^T (y / (A x + background) - 1)`` (batched over leading axes of ``x``)."""
    sens = model.sensitivity()

    def grad(x: torch.Tensor) -> torch.Tensor:
        ybar = model.direct(x) + background
        return model.adjoint(y / ybar.clamp_min(_TINY)) - sens

    return grad


def pnp_ula(
    model: AcquisitionModel,
    y: torch.Tensor,
    denoiser: Callable[[torch.Tensor], torch.Tensor],
    config: PnPULAConfig | None = None,
    x_init: torch.Tensor | None = None,
    progress: bool = False,
    support: torch.Tensor | None = None,
    state_path: str | Path | None = None,
    state_every: int = 500,
    identity: dict | None = None,
) -> PnPULAResult:
    """Sample the posterior of prompts ``y`` (``model.data_shape``) with ``denoiser`` as the prior.

    ``denoiser`` maps normalised images ``(..., z, y, x)`` to denoised ones (firmly nonexpansive for
    the step-size bound to hold). ``x_init`` (optional): starting image; default PnP-ADMM.
    ``support`` (optional boolean ``(z, y, x)``): voxels outside it are held at zero.
    ``state_path``: save the chains' state there every ``state_every`` Langevin steps and resume from it
    (:class:`~petuq_sirf.inference.langevin.ChainCheckpoint`); the run is identified by the settings, step
    size, data, starting image and ``identity`` (e.g. the denoiser weights' checksum), and a state of
    another run is refused.
    """
    cfg = config or PnPULAConfig()
    y = check_data(y, model.data_shape, "measured prompts").to(model.device)
    with torch.no_grad():
        if x_init is None:
            if cfg.init_admm_iterations > 0:
                x_init = pnp_admm(model, y, denoiser, PnPADMMConfig(num_iterations=cfg.init_admm_iterations)).image
            else:
                from petuq_sirf.recon.pnp_admm import initial_image

                x_init = initial_image(model, y)
        x_init = torch.as_tensor(x_init, dtype=y.dtype, device=model.device).clamp_min(0)
        if tuple(x_init.shape) != tuple(model.image_shape):
            raise ValueError(f"initial image has shape {tuple(x_init.shape)}, expected {model.image_shape}")
        if support is not None:
            support = torch.as_tensor(support, device=model.device).bool()
            if tuple(support.shape) != tuple(model.image_shape):
                raise ValueError(f"support has shape {tuple(support.shape)}, expected {model.image_shape}")
            if not support.any():
                raise ValueError("the support mask is empty")
            x_init = torch.where(support, x_init, torch.zeros_like(x_init))
        c = float(volume_mean_scale(x_init))
        sens = model.sensitivity()
        ybar0 = model.forward(x_init)
        eta = cfg.background_floor_rel * float(ybar0.mean())
        background = model.additive.clamp_min(eta)
        eps = cfg.denoiser_sigma**2
        prior_coef = cfg.alpha / (eps * c * c)
        if cfg.preconditioner == "em":
            fisher = sens / x_init.clamp_min(cfg.activity_floor * c)  # diagonal curvature at x_init
            pre = 1.0 / (fisher + prior_coef).clamp_min(_TINY)
        else:
            pre = torch.ones_like(sens)
        if support is not None:
            pre = torch.where(support, pre, torch.zeros_like(pre))  # M = 0: held at zero
        root = pre.sqrt()
        curvature = y / (background if cfg.lipschitz == "support" else ybar0.clamp_min(eta)) ** 2
        lip_y = power_iteration(lambda v: root * model.adjoint(curvature * model.direct(root * v)), x_init, 40)
        lip_y *= 1.05  # power iteration approaches the largest eigenvalue from below
        lip_p = prior_coef * float(pre.max())
        step = cfg.step_fraction / (lip_y + lip_p)
        data_grad = poisson_score(model, y, background)

        def grad(x: torch.Tensor) -> torch.Tensor:
            g = data_grad(x)
            if cfg.alpha > 0:
                g = g + prior_coef * (c * denoiser(x / c) - x)
            return g

        x0 = x_init.expand(cfg.num_chains, *x_init.shape).clone()
        checkpoint = None
        if state_path is not None:
            fingerprint = {
                "method": "pnp-ula",
                "config": vars(cfg),
                "data_shape": list(model.data_shape),
                "sums": [float(y.double().sum()), float(x_init.double().sum()), float(pre.double().sum())],
                "scale": c,
                "identity": identity or {},
            }
            checkpoint = ChainCheckpoint(Path(state_path), state_every, fingerprint)
        chain = langevin_sample(
            grad,
            x0,
            step,
            cfg.langevin(),
            preconditioner=pre,
            reflect=True,
            progress=progress,
            desc="PnP-ULA",
            checkpoint=checkpoint,
        )
    samples = chain.samples.reshape(-1, *x_init.shape).float()
    mean = chain.mean.float()
    std = chain.variance.clamp_min(0).sqrt().float()
    summary = PosteriorImage(mean, std, std, torch.zeros_like(std), samples)
    settings = {
        "step_size": step,
        "lipschitz_likelihood": lip_y,
        "lipschitz_prior": lip_p,
        "lipschitz_kind": cfg.lipschitz,
        "scale": c,
        "background_floor": eta,
        "bins_floored": int((model.additive < eta).sum()),
        "support_voxels": None if support is None else int(support.sum()),
        "steps_per_chain": chain.num_steps,
        "diagnostics": chain.diagnostics(),
    }
    if not all(math.isfinite(v) for v in (step, lip_y, lip_p)):
        raise FloatingPointError(f"PnP-ULA step size is not finite: {settings}")
    return PnPULAResult(summary, x_init, chain, settings)
