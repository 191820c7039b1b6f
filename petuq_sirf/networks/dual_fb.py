"""Unfolded dual block-coordinate forward-backward (DBFB) proximal block.

The block approximates the proximity operator of a learned, weighted analysis-sparsity prior with a
positivity constraint, for images ``z`` of shape ``(N, 1, y, x)`` (normalised, mean about 1)::

    prox(z) = argmin_{x >= 0}  1/2 ||x - z||^2 + sum_b sum_p lambda_b(p) |(W_b x)(p)|

``W = [W_1; ...; W_B]`` is one learned bank of ``filters`` 3x3 convolutions, split into ``B`` blocks. Its dual
(Fenchel–Rockafellar) problem has box constraints ``|u_b(p)| <= lambda_b(p)`` and the primal point
``x(u) = max(z - sum_b W_b^T u_b, 0)``. Each of the ``layers`` unfolded iterations updates the dual
blocks one after the other (block-coordinate, Gauss–Seidel)::

    u_b <- clip(u_b + tau_b W_b x(u), -lambda_b, lambda_b),   then x <- x(u)

with the filters shared by all layers (one prior) and learned per-layer step sizes and thresholds,
after the dual block-coordinate forward-backward algorithm unfolded by Savanier, Chouzenoux, Pesquet
and Riddell (IEEE TCI 2023). Only the changed block's contribution to ``sum_b W_b^T u_b`` is recomputed.
The step of block ``b`` is ``tau_b = 1.99 sigmoid(theta_b) / L_b`` with ``L_b = sum_j ||w_j||_1^2 >=
||W_b||^2`` (Young's inequality), so every layer is a convergent dual step (``tau_b < 2 / ||W_b||^2``)
whatever the learned filters are — including the weight draws of a Bayesian posterior over them.

Thresholds may depend on a per-voxel noise-level map ``n`` (``lambda = exp(a + s n)``): the block
then smooths less where (and when) the counts are higher.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class UnfoldedDualFBProx(nn.Module):
    """``forward(z, noise=None) -> x >= 0``; ``z``, ``noise``, ``x`` of shape ``(N, 1, y, x)``.

    Parameters: ``filters`` ``(filters, 1, 3, 3)`` (the analysis operator),
    ``log_threshold`` and ``threshold_slope`` ``(layers, blocks)`` (``lambda = exp(log_threshold +
    threshold_slope * noise)``), ``step_logit`` ``(layers, blocks)``.
    """

    def __init__(
        self, layers: int = 8, filters: int = 16, blocks: int = 2, init_threshold: float = 0.05, seed: int = 0
    ) -> None:
        super().__init__()
        # (sizes are bounded before allocation by UnrolledConfig, which builds this block)
        if layers < 1 or filters < 1:
            raise ValueError(f"DBFB: layers and filters must be >= 1, got {layers} and {filters}")
        if blocks < 1 or filters % blocks:
            raise ValueError(f"DBFB: {filters} filters cannot be split into {blocks} equal blocks")
        self.layers, self.num_filters, self.blocks = layers, filters, blocks
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(filters, 1, 3, 3, generator=gen) * 0.3
        w = w - w.mean(dim=(-2, -1), keepdim=True)  # start high-pass: constant images are not penalised
        self.filters = nn.Parameter(w)
        self.log_threshold = nn.Parameter(torch.full((layers, blocks), float(torch.log(torch.tensor(init_threshold)))))
        self.threshold_slope = nn.Parameter(torch.zeros(layers, blocks))
        self.step_logit = nn.Parameter(torch.zeros(layers, blocks))

    def step_sizes(self) -> torch.Tensor:
        """``(layers, blocks)`` dual steps ``tau < 2 / ||W_b||^2`` (see the module docstring)."""
        per = self.num_filters // self.blocks
        l1 = self.filters.abs().sum(dim=(-3, -2, -1))  # (filters,)
        lip = (l1**2).reshape(self.blocks, per).sum(-1).clamp_min(1e-8)
        return 1.99 * torch.sigmoid(self.step_logit) / lip

    def thresholds(self, noise: torch.Tensor | None, layer: int, block: int, like: torch.Tensor) -> torch.Tensor:
        """Per-voxel thresholds ``lambda`` of one block, broadcastable to ``(N, 1, y, x)``."""
        a = self.log_threshold[layer, block]
        if noise is None:
            return torch.exp(a).expand_as(like[:, :1])
        return torch.exp(a + self.threshold_slope[layer, block] * noise)

    def forward(self, z: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.iterate(z, noise)[0]

    def iterate(
        self, z: torch.Tensor, noise: torch.Tensor | None = None, repeat_last: int = 0
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The unfolded iterations; returns the primal image and the dual blocks ``u_b`` ``(N, filters/B, y, x)``.

        ``repeat_last``: run that many extra iterations with the last layer's parameters (a fixed-operator
        dual forward-backward run, which converges to the exact prox of that layer's prior).
        """
        if z.dim() != 4 or z.shape[1] != 1:
            raise ValueError(f"the DBFB block takes images (N, 1, y, x), got {tuple(z.shape)}")
        per = self.num_filters // self.blocks
        tau = self.step_sizes()
        u = [z.new_zeros(z.shape[0], per, *z.shape[-2:]) for _ in range(self.blocks)]
        x = z.clamp_min(0)
        back = torch.zeros_like(z)  # sum_b W_b^T u_b
        for i in range(self.layers + repeat_last):
            k = min(i, self.layers - 1)
            for b in range(self.blocks):
                wb = self.filters[b * per : (b + 1) * per]
                lam = self.thresholds(noise, k, b, z)
                new = torch.maximum(torch.minimum(u[b] + tau[k, b] * F.conv2d(x, wb, padding=1), lam), -lam)
                back = back + F.conv_transpose2d(new - u[b], wb, padding=1)
                u[b] = new
                x = (z - back).clamp_min(0)
        return x, u

    def objective(self, x: torch.Tensor, z: torch.Tensor, noise: torch.Tensor | None = None, layer: int = -1):
        """Primal objective of the prox problem with layer ``layer``'s filters and thresholds, per item ``(N,)``."""
        per = self.num_filters // self.blocks
        k = layer % self.layers
        val = 0.5 * ((x - z) ** 2).sum(dim=(1, 2, 3))
        for b in range(self.blocks):
            wx = F.conv2d(x, self.filters[b * per : (b + 1) * per], padding=1)
            val = val + (self.thresholds(noise, k, b, z) * wx.abs()).sum(dim=(1, 2, 3))
        return val
