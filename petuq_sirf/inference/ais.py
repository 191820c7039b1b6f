"""Population Monte Carlo: adaptive importance sampling of a parameter vector (PMCnet, REFERENCES §2).

Target ``pi(theta) ∝ exp(log_target(theta))`` on ``theta (d,)``. ``N`` Gaussian proposals, ``K``
samples each per iteration, deterministic-mixture weights, local / "glocal" resampling, robust
covariance adaptation with clipped weights, and scaled-gradient mean adaptation with step halving.
``diagonal=True`` is the "light" version (diagonal covariances; pair it with a minibatch loss).
The samples of the iterations after ``burn_in`` are pooled with their raw weights for the posterior
moments and the evidence estimate (the mean raw weight).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class PMCConfig:
    """Settings (PMCnet's scripts: ``N, K, T = 10, 10, 5`` to ``20, 20, 5``).

    Attributes:
        num_proposals: ``N``.
        samples_per_proposal: ``K``.
        iterations: ``T``.
        sigma_prop: initial proposal std (the caller may pass a per-dimension ``init_std`` instead).
        init_spread: std of the jitter of the initial proposal means around ``theta0``.
        beta: covariance adaptation rate.
        glocal_period: every this many iterations resample globally (0: always local).
        max_halvings: step halvings of the mean adaptation before keeping the resampled point.
        diagonal: diagonal covariances (light version) instead of full matrices.
        burn_in: iterations left out of the pooled estimate (default ``iterations // 2``): the first
            proposals are far from the target and a few of their samples get huge weights.
        seed: random seed.
    """

    num_proposals: int = 10
    samples_per_proposal: int = 20
    iterations: int = 10
    sigma_prop: float = 0.05
    init_spread: float = 0.02
    beta: float = 0.5
    glocal_period: int = 3
    max_halvings: int = 8
    diagonal: bool = True
    burn_in: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_proposals < 1 or self.samples_per_proposal < 2 or self.iterations < 1:
            raise ValueError("PMC needs num_proposals >= 1, samples_per_proposal >= 2 and iterations >= 1")
        if not self.sigma_prop > 0:
            raise ValueError(f"sigma_prop must be > 0, got {self.sigma_prop}")
        if not 0 < self.beta <= 1:
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")


@dataclass
class PMCResult:
    """Pooled weighted samples ``samples (M, d)`` with ``log_weights (M,)`` (unnormalised)."""

    samples: torch.Tensor
    log_weights: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    ess: float
    ess_per_iteration: list[float] = field(default_factory=list)
    log_evidence: float = float("nan")
    proposal_means: torch.Tensor | None = None

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.log_weights, 0)

    def resample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``num`` particles drawn with replacement by weight, shape ``(num, d)``."""
        idx = torch.multinomial(self.weights, num, replacement=True, generator=generator)
        return self.samples[idx]


def effective_sample_size(log_weights: torch.Tensor) -> float:
    """``1 / sum(w_norm^2)`` of importance weights given in log space."""
    w = torch.softmax(log_weights.double().reshape(-1), 0)
    return float(1.0 / (w**2).sum())


def _log_normal(theta: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, diagonal: bool) -> torch.Tensor:
    """``log N(theta_i; mu_n, Sigma_n)`` for ``theta (M, d)`` -> ``(M, N)``."""
    d = theta.shape[1]
    diff = theta[:, None, :] - means[None]  # (M, N, d)
    if diagonal:
        maha = (diff**2 / covs[None]).sum(-1)
        logdet = torch.log(covs).sum(-1)[None]
    else:
        chol = torch.linalg.cholesky(covs)  # (N, d, d)
        sol = torch.linalg.solve_triangular(chol[None], diff.unsqueeze(-1), upper=False).squeeze(-1)
        maha = (sol**2).sum(-1)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)[None]
    return -0.5 * (d * LOG_2PI + logdet + maha)


def _weighted_cov(x: torch.Tensor, w: torch.Tensor, diagonal: bool) -> torch.Tensor:
    """Weighted covariance of ``x (K, d)`` with normalised weights ``w (K,)``."""
    m = (w[:, None] * x).sum(0)
    c = x - m
    if diagonal:
        return (w[:, None] * c**2).sum(0)
    return (w[:, None, None] * c[:, :, None] * c[:, None, :]).sum(0)


def _is_pd(cov: torch.Tensor, diagonal: bool) -> bool:
    if not bool(torch.isfinite(cov).all()):
        return False
    if diagonal:
        return bool((cov > 0).all())
    return bool(torch.linalg.cholesky_ex(cov).info == 0)


def pmc_sample(
    log_target: Callable[[torch.Tensor], torch.Tensor],
    theta0: torch.Tensor,
    config: PMCConfig | None = None,
    make_loss: Callable[[], Callable[[torch.Tensor], torch.Tensor]] | None = None,
    init_std: torch.Tensor | None = None,
    progress: bool = False,
) -> PMCResult:
    """Run PMC from proposals around ``theta0 (d,)``.

    Args:
        log_target: unnormalised log posterior of a batch ``(P, d) -> (P,)`` (no gradient needed).
        theta0: a point estimate (e.g. the MAP / trained network weights).
        make_loss: returns a loss ``L(theta (d,)) -> scalar`` (differentiable) for one mean-adaptation
            step; called once per proposal and step so a minibatch stays fixed during step halving.
            Default ``-log_target``.
        init_std: initial proposal std per dimension ``(d,)`` (default ``config.sigma_prop``).
    """
    cfg = config or PMCConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    theta0 = theta0.detach().double().reshape(-1)
    d = theta0.numel()
    n, k = cfg.num_proposals, cfg.samples_per_proposal
    if make_loss is None:

        def make_loss() -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda t: -log_target(t[None])[0]

    std0 = torch.full((d,), cfg.sigma_prop, dtype=torch.float64) if init_std is None else init_std.double().reshape(d)
    means = theta0[None] + cfg.init_spread * torch.randn((n, d), generator=gen, dtype=torch.float64)
    covs = std0[None].repeat(n, 1) ** 2 if cfg.diagonal else torch.diag_embed(std0**2)[None].repeat(n, 1, 1)
    all_samples, all_logw, ess_hist = [], [], []
    for t in tqdm(range(1, cfg.iterations + 1), desc="PMC", disable=not progress or None):
        eps = torch.randn((n, k, d), generator=gen, dtype=torch.float64)
        if cfg.diagonal:
            samples = means[:, None] + eps * covs.sqrt()[:, None]
        else:
            samples = means[:, None] + torch.einsum("nij,nkj->nki", torch.linalg.cholesky(covs), eps)
        flat = samples.reshape(n * k, d)
        with torch.no_grad():
            log_pi = log_target(flat).double()
            log_q = torch.logsumexp(_log_normal(flat, means, covs, cfg.diagonal), 1) - math.log(n)
        logw = torch.nan_to_num(log_pi - log_q, nan=-math.inf)
        if not bool(torch.isfinite(logw).any()):
            raise ValueError("all importance weights are zero: the proposals miss the target (reduce sigma_prop)")
        all_samples.append(flat)
        all_logw.append(logw)
        ess_hist.append(effective_sample_size(logw))
        # resampling: local (one per proposal from its own K samples) or glocal (N from all N K)
        logw_nk = logw.reshape(n, k)
        if cfg.glocal_period > 0 and t % cfg.glocal_period == 0:
            idx = torch.multinomial(torch.softmax(logw, 0), n, replacement=True, generator=gen)
            parents, picks = idx // k, idx % k
        else:
            parents = torch.arange(n)
            picks = torch.stack(
                [torch.multinomial(torch.softmax(logw_nk[i], 0), 1, generator=gen)[0] for i in range(n)]
            )
        resampled = samples[parents, picks]
        # covariance adaptation with robust (clipped-weight) version
        new_covs = covs.clone()
        eta = 1.0 / (t + 1)
        clip_rank = math.ceil(math.sqrt(k))
        for i in range(n):
            p = int(parents[i])
            wn = torch.softmax(logw_nk[p], 0)
            thresh = torch.topk(wn, clip_rank).values[-1]
            wc = torch.minimum(wn, thresh)
            wc = wc / wc.sum()
            s_full = _weighted_cov(samples[p], wn, cfg.diagonal)
            s_crop = _weighted_cov(samples[p], wc, cfg.diagonal)
            cand = (1 - cfg.beta) * covs[p] + cfg.beta * ((1 - eta) * s_full + eta * s_crop)
            new_covs[i] = cand if _is_pd(cand, cfg.diagonal) else covs[p]
        covs = new_covs
        # mean adaptation: scaled gradient step with step halving
        new_means = resampled.clone()
        for i in range(n):
            loss = make_loss()
            x = resampled[i].clone().requires_grad_(True)
            value = loss(x)
            (grad,) = torch.autograd.grad(value, x)
            direction = covs[i] * grad if cfg.diagonal else covs[i] @ grad
            gamma = 1.0
            with torch.no_grad():
                for _ in range(cfg.max_halvings + 1):
                    cand = resampled[i] - gamma * direction
                    if float(loss(cand)) < float(value):
                        new_means[i] = cand
                        break
                    gamma /= 2
        means = new_means
    first = cfg.iterations // 2 if cfg.burn_in is None else min(cfg.burn_in, cfg.iterations - 1)
    samples = torch.cat(all_samples[first:])
    logw = torch.cat(all_logw[first:])
    w = torch.softmax(logw, 0)
    mean = (w[:, None] * samples).sum(0)
    var = (w[:, None] * (samples - mean) ** 2).sum(0)
    # evidence: the mean raw weight over the pooled iterations (each is an unbiased estimate of Z)
    log_z = float(torch.logsumexp(logw, 0)) - math.log(logw.numel())
    return PMCResult(samples, logw, mean, var, effective_sample_size(logw), ess_hist, log_z, means)
