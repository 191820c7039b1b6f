"""A small CNN denoiser trained to be firmly nonexpansive (for convergent plug-and-play).

After Pesquet, Repetti, Terris & Wiaux, "Learning maximally monotone operators" (2021): ``D`` is
firmly nonexpansive iff ``Q = 2D - I`` is nonexpansive, i.e. ``||J_Q(x)||_2 <= 1`` everywhere. We
train ``D`` on denoising pairs with the penalty ``lam * mean(relu(||J_Q(x~)||^2 - (1 - eps)))`` at
random points ``x~`` between clean and noisy images, the spectral norm estimated by power iteration
with autograd (Jacobian-vector products by the double-VJP trick, then a VJP). Spectral normalisation
of every convolution is available as an option (a cruder, architectural 1-Lipschitz bound on ``Q``
would need more; it only bounds the residual branch).

The denoiser acts slice by slice on normalised images ``(..., z, y, x)`` (divide by a scalar image
scale first; conjugating by a positive scale keeps firm nonexpansiveness).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from petuq_sirf.inference.network_limits import (
    MAX_CHANNELS,
    MAX_LAYERS,
    check_parameter_count,
    check_range,
    conv_stack_parameters,
)
from petuq_sirf.inference.rng import seeded
from petuq_sirf.inference.weight_posterior import SVIConfig, WeightPosterior, fit_weight_posterior
from petuq_sirf.networks.blocks import conv_stack
from petuq_sirf.scanner.image_geometry import ImageGeometry


@dataclass(frozen=True)
class NonexpansiveDenoiserConfig:
    """Architecture of :class:`ResidualDenoiser`: ``depth`` 3x3 convolutions, ``channels`` wide."""

    channels: int = 16
    depth: int = 4
    spectral_norm: bool = False

    def __post_init__(self) -> None:
        if self.channels < 1 or self.depth < 2:
            raise ValueError(f"need channels >= 1 and depth >= 2, got {self.channels}, {self.depth}")
        check_range("denoiser channels", self.channels, 1, MAX_CHANNELS)
        check_range("denoiser depth", self.depth, 2, MAX_LAYERS)
        check_parameter_count("the PnP denoiser", conv_stack_parameters(1, self.channels, self.depth, 1))


class ResidualDenoiser(nn.Module):
    """``D(x) = x - R(x)`` with ``R`` a ReLU CNN applied to each z slice. Input/output ``(..., z, y, x)``."""

    def __init__(self, config: NonexpansiveDenoiserConfig | None = None) -> None:
        super().__init__()
        self.config = config or NonexpansiveDenoiserConfig()
        c = self.config
        self.residual = conv_stack(
            1, c.channels, 1, c.depth, nn.ReLU, spectral_norm=c.spectral_norm, last_weight_scale=0.1
        )  # starts near the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(f"denoiser input must be (..., z, y, x), got shape {tuple(x.shape)}")
        flat = x.reshape(-1, 1, *x.shape[-2:])
        return (flat - self.residual(flat)).reshape(x.shape)


def reflected(denoiser: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reflected operator ``Q = 2D - I`` (nonexpansive iff ``D`` is firmly nonexpansive)."""
    return lambda x: 2 * denoiser(x) - x


def _batch_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def jacobian_spectral_norm(
    op: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    iterations: int = 20,
    create_graph: bool = False,
    seed: int = 0,
) -> torch.Tensor:
    """Largest singular value of the Jacobian of ``op`` at each item of the batch ``x (B, ...)``.

    Power iteration on ``J^T J``: ``J u`` by differentiating the VJP ``J^T w`` with respect to
    ``w``, then ``J^T (J u)`` by one VJP. Returns ``(B,)``; with ``create_graph`` the result is
    differentiable in the parameters of ``op`` (the power-iteration vector itself is detached).
    """
    if iterations < 1:
        raise ValueError(f"need at least one power iteration, got {iterations}")
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = op(x)
        w = torch.zeros_like(out, requires_grad=True)
        jtw = torch.autograd.grad(out, x, w, create_graph=True)[0]
        gen = torch.Generator(device="cpu").manual_seed(seed)
        u = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        u = u / _batch_norm(u)
        for _ in range(iterations - 1):
            ju = torch.autograd.grad(jtw, w, u, retain_graph=True)[0]
            v = torch.autograd.grad(out, x, ju, retain_graph=True)[0]
            u = (v / _batch_norm(v)).detach()
        ju = torch.autograd.grad(jtw, w, u, retain_graph=create_graph, create_graph=create_graph)[0]
    return ju.flatten(1).norm(dim=1)


# ------------------------------------------------------------------------------------------ training data
def clean_ellipse_images(image: ImageGeometry, n: int, seed: int = 0, lesion_probability: float = 0.0) -> torch.Tensor:
    """``n`` random-ellipse phantoms ``(n, z, y, x)``, each divided by its mean (mean 1)."""
    from petuq_sirf.simulation.phantoms import random_ellipses_phantom

    rng = np.random.default_rng(seed)
    imgs = torch.stack(
        [random_ellipses_phantom(image, rng, lesion_probability=lesion_probability).activity for _ in range(n)]
    )
    return imgs / imgs.mean(dim=(-3, -2, -1), keepdim=True).clamp_min(1e-12)


def clean_family_images(
    image: ImageGeometry, families: Sequence[str], num_per_family: int, split: str = "train", start: int = 0
) -> torch.Tensor:
    """``num_per_family`` phantoms of each anatomical family (``petuq_sirf.simulation.phantom_families``) from
    ``split``'s seeds, lesions included, ``(n, z, y, x)``, each divided by its mean (mean 1)."""
    from petuq_sirf.simulation.phantom_families import check_families, family_phantoms

    families = list(families)
    if not families:
        raise ValueError("give at least one phantom family")
    check_families(families)
    if num_per_family < 1:
        raise ValueError(f"num_per_family must be >= 1, got {num_per_family}")
    imgs = torch.stack(
        [ph.activity for f in families for ph in family_phantoms(f, image, split, num_per_family, start)]
    )
    return imgs / imgs.mean(dim=(-3, -2, -1), keepdim=True).clamp_min(1e-12)


@dataclass
class NonexpansiveTrainingConfig:
    """Training of the firmly nonexpansive denoiser on Gaussian-noise pairs of normalised images.

    ``noise_std`` is the largest noise level (normalised units; each pair draws a level uniformly
    in ``[0, noise_std]``). ``penalty`` is ``lam``; ``epsilon`` the margin below 1 aimed at;
    ``penalty`` 0 trains an unconstrained denoiser (for the comparison).
    """

    num_images: int = 32
    num_steps: int = 300
    batch_size: int = 8
    patch: int = 32
    noise_std: float = 0.3
    lr: float = 2e-3
    penalty: float = 1.0
    epsilon: float = 0.1
    power_iterations: int = 5
    penalty_batch: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_steps < 1 or self.batch_size < 1 or self.num_images < 1:
            raise ValueError("num_steps, batch_size and num_images must be >= 1")
        if self.penalty < 0 or not 0 <= self.epsilon < 1:
            raise ValueError("penalty must be >= 0 and epsilon in [0, 1)")


@dataclass
class NonexpansiveTrainingResult:
    denoiser: ResidualDenoiser
    losses: list[float]
    jacobian_norms: list[float]


def _patches(images: torch.Tensor, size: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """Random ``size x size`` patches ``(count, size, size)`` from slices of ``images (n, z, y, x)``."""
    slices = images.reshape(-1, *images.shape[-2:])
    ny, nx = slices.shape[-2:]
    size = min(size, ny, nx)
    idx = torch.randint(0, slices.shape[0], (count,), generator=gen)
    oy = torch.randint(0, ny - size + 1, (count,), generator=gen)
    ox = torch.randint(0, nx - size + 1, (count,), generator=gen)
    return torch.stack([slices[i, a : a + size, b : b + size] for i, a, b in zip(idx, oy, ox)])


def train_nonexpansive_denoiser(
    image: ImageGeometry,
    config: NonexpansiveTrainingConfig | None = None,
    denoiser_config: NonexpansiveDenoiserConfig | None = None,
    clean: torch.Tensor | None = None,
    progress: bool = False,
) -> NonexpansiveTrainingResult:
    """Train :class:`ResidualDenoiser` by MSE denoising plus the firm-nonexpansiveness penalty.

    ``clean`` (optional): normalised training images ``(n, z, y, x)``; default random ellipses.
    ``config.seed`` seeds the initialisation (on a fork of torch's global RNG) and the training pairs.
    """
    cfg = config or NonexpansiveTrainingConfig()
    with seeded(cfg.seed):  # initial weights (global RNG) on a fork: the caller's RNG state is unchanged
        return _train_nonexpansive(image, cfg, ResidualDenoiser(denoiser_config), clean, progress)


def _train_nonexpansive(
    image: ImageGeometry,
    cfg: NonexpansiveTrainingConfig,
    net: ResidualDenoiser,
    clean: torch.Tensor | None,
    progress: bool,
) -> NonexpansiveTrainingResult:
    gen = torch.Generator().manual_seed(cfg.seed)
    if clean is None:
        clean = clean_ellipse_images(image, cfg.num_images, cfg.seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.num_steps)
    losses, norms = [], []
    for step in tqdm(range(cfg.num_steps), desc="PnP denoiser training", disable=not progress or None):
        target = _patches(clean, cfg.patch, cfg.batch_size, gen).unsqueeze(1)
        sigma = torch.rand(cfg.batch_size, 1, 1, 1, generator=gen) * cfg.noise_std
        noisy = target + sigma * torch.randn(target.shape, generator=gen)
        loss = F.mse_loss(net(noisy), target)
        if cfg.penalty > 0:
            k = min(cfg.penalty_batch, cfg.batch_size)
            tau = torch.rand(k, 1, 1, 1, generator=gen)
            between = tau * target[:k] + (1 - tau) * noisy[:k]
            sn = jacobian_spectral_norm(
                reflected(net), between, cfg.power_iterations, create_graph=True, seed=cfg.seed + step
            )
            loss = loss + cfg.penalty * F.relu(sn**2 - (1 - cfg.epsilon)).mean()
            norms.append(float(sn.detach().max()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    net.eval()
    return NonexpansiveTrainingResult(net, losses, norms)


def fit_denoiser_posterior(
    net: ResidualDenoiser,
    image: ImageGeometry,
    config: NonexpansiveTrainingConfig | None = None,
    svi: SVIConfig | None = None,
    clean: torch.Tensor | None = None,
) -> tuple[WeightPosterior, list[float]]:
    """Mean-field posterior over all weights of a trained denoiser (SVI from its point weights).

    The log-likelihood is the training objective, tempered as a Gaussian:
    ``-(N / (2 sigma^2)) (mse + penalty * relu(||J_Q||^2 - (1 - eps)))`` with ``N`` the number of
    training voxels and ``sigma^2`` the trained network's MSE; so weight draws are penalised for
    leaving the firmly nonexpansive set as the point network was. Check draws with
    :func:`jacobian_spectral_norm` (``pnp_admm_posterior`` can reject those above a bound).
    """
    cfg = config or NonexpansiveTrainingConfig()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    if clean is None:
        clean = clean_ellipse_images(image, cfg.num_images, cfg.seed)
    n_voxels = clean.numel()

    def pairs():
        while True:
            target = _patches(clean, cfg.patch, cfg.batch_size, gen).unsqueeze(1)
            sigma = torch.rand(cfg.batch_size, 1, 1, 1, generator=gen) * cfg.noise_std
            yield target, target + sigma * torch.randn(target.shape, generator=gen)

    it = pairs()
    with torch.no_grad():
        t, n = next(it)
        noise_var = float(F.mse_loss(net(n), t).clamp_min(1e-8))

    def likelihood(call, target, noisy):
        loss = F.mse_loss(call(noisy), target)
        if cfg.penalty > 0:
            k = min(cfg.penalty_batch, target.shape[0])
            sn = jacobian_spectral_norm(
                lambda v: 2 * call(v) - v, noisy[:k], cfg.power_iterations, create_graph=True, seed=cfg.seed
            )
            loss = loss + cfg.penalty * F.relu(sn**2 - (1 - cfg.epsilon)).mean()
        pyro.factor("denoising", -n_voxels / (2 * noise_var) * loss)

    return fit_weight_posterior(net, [n for n, _ in net.named_parameters()], likelihood, it, svi)
