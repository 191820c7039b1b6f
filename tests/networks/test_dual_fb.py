"""The unfolded dual block-coordinate forward-backward (DBFB) prox block."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from petuq_sirf.networks.dual_fb import UnfoldedDualFBProx


def _dual_value(block: UnfoldedDualFBProx, z: torch.Tensor, u: list[torch.Tensor]) -> torch.Tensor:
    """Dual function ``D(u) = 1/2 ||x(u) - z||^2 + <W^T u, x(u)>``, ``x(u) = max(z - W^T u, 0)``: a lower
    bound of the prox objective for every feasible ``u`` (weak duality)."""
    per = block.num_filters // block.blocks
    wt = sum(F.conv_transpose2d(u[b], block.filters[b * per : (b + 1) * per], padding=1) for b in range(block.blocks))
    xu = (z - wt).clamp_min(0)
    return 0.5 * ((xu - z) ** 2).sum(dim=(1, 2, 3)) + (wt * xu).sum(dim=(1, 2, 3))


def test_long_run_reaches_the_exact_prox_zero_duality_gap():
    block = UnfoldedDualFBProx(layers=3, filters=8, blocks=2, init_threshold=0.1, seed=1)
    z = 2 * torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        block.step_logit.fill_(3.0)  # steps of 0.95 x the bound
        x, u = block.iterate(z, repeat_last=400)
        primal, dual = block.objective(x, z), _dual_value(block, z, u)
        short, _ = block.iterate(z)
    lam = torch.exp(block.log_threshold[-1]).detach()
    for b in range(2):
        assert float(u[b].abs().max()) <= float(lam[b]) * (1 + 1e-6)  # dual feasible
    assert bool((x >= 0).all())
    gap = (primal - dual) / primal
    assert float(gap.max()) < 1e-4 and float(gap.min()) > -1e-6  # weak duality, and a tight gap
    # the prior does something: the prox is not the positive part of z, and the short run is on its way
    assert float((x - z.clamp_min(0)).abs().max()) > 1e-2
    assert float(block.objective(short, z).sum().detach()) < float(block.objective(z.clamp_min(0), z).sum().detach())


def test_dual_steps_are_below_two_over_the_block_norm_squared():
    block = UnfoldedDualFBProx(layers=2, filters=6, blocks=3, seed=2)
    with torch.no_grad():
        block.filters.mul_(5.0)
        block.step_logit.fill_(10.0)  # sigmoid -> 1: the largest step the bound allows
    tau = block.step_sizes().detach()
    per = 2
    for b in range(3):
        wb = block.filters[b * per : (b + 1) * per].detach()
        x = torch.randn(1, 1, 24, 24, generator=torch.Generator().manual_seed(b))
        for _ in range(200):  # power iteration on W_b^T W_b
            x = F.conv_transpose2d(F.conv2d(x, wb, padding=1), wb, padding=1)
            x = x / x.norm()
        norm2 = float((F.conv2d(x, wb, padding=1) ** 2).sum())
        assert float(tau[:, b].max()) < 2.0 / norm2


def test_higher_noise_level_means_stronger_smoothing():
    block = UnfoldedDualFBProx(layers=6, filters=8, blocks=2, init_threshold=0.1, seed=3)
    with torch.no_grad():
        block.threshold_slope.fill_(1.0)  # lambda = exp(a + n)
    z = 1 + 0.3 * torch.randn(1, 1, 24, 24, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        low = block(z, torch.full_like(z, -2.0))
        high = block(z, torch.full_like(z, 1.0))
    tv = lambda im: float((im[..., 1:, :] - im[..., :-1, :]).abs().sum() + (im[..., 1:] - im[..., :-1]).abs().sum())  # noqa: E731
    assert tv(high) < 0.8 * tv(low)
    assert float((low - z).abs().mean()) < float((high - z).abs().mean())


def test_bad_shapes_and_block_splits_are_refused():
    with pytest.raises(ValueError, match="equal blocks"):
        UnfoldedDualFBProx(filters=7, blocks=2)
    with pytest.raises(ValueError, match=r"\(N, 1, y, x\)"):
        UnfoldedDualFBProx()(torch.ones(1, 2, 8, 8))
