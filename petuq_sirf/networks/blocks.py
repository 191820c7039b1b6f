"""The one 2D convolution-stack builder and the heteroscedastic Gaussian training loss.

Used by :class:`~petuq_sirf.bayes.networks.HeteroscedasticCNN` (dilated ReLU body),
:class:`~petuq_sirf.recon.nonexpansive.ResidualDenoiser` (ReLU residual, optionally spectrally
normalised) and :class:`~petuq_sirf.recon.unrolled.UnrolledFBSEM` (SiLU regulariser). Layers are
created in a fixed order (each convolution, its spectral normalisation, its activation, its dropout), so a
seeded construction draws the same initial weights as the hand-written stacks it replaced and the
``state_dict`` keys (``0.weight``, ``2.weight``, ...) are those of the shipped weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def conv_stack(
    in_channels: int,
    hidden_channels: int,
    out_channels: int,
    depth: int,
    activation: Callable[[], nn.Module] = nn.ReLU,
    dilations: Sequence[int] | None = None,
    dropout: float = 0.0,
    spectral_norm: bool = False,
    final_activation: bool = False,
    last_weight_scale: float | None = None,
) -> nn.Sequential:
    """``depth`` 3x3 convolutions ``in -> hidden -> ... -> out`` with ``activation`` between them.

    Args:
        dilations: per-layer dilation (padding = dilation keeps the image size); default 1 everywhere.
        dropout: dropout after each activation (0 = none).
        spectral_norm: spectrally normalise every convolution (``torch.nn.utils.parametrizations``).
        final_activation: also apply ``activation`` (and dropout) after the last convolution.
        last_weight_scale: multiply the last convolution's initial weights by this and zero its bias
            (networks that should start close to the identity / to zero output).
    """
    if depth < 1:
        raise ValueError(f"a convolution stack needs depth >= 1, got {depth}")
    dilations = tuple(dilations) if dilations is not None else (1,) * depth
    if len(dilations) != depth:
        raise ValueError(f"{len(dilations)} dilations given for {depth} layers")
    layers: list[nn.Module] = []
    ch = in_channels
    for i, d in enumerate(dilations):
        last = i == depth - 1
        out = out_channels if last else hidden_channels
        conv: nn.Module = nn.Conv2d(ch, out, 3, padding=d, dilation=d)
        if spectral_norm:
            conv = nn.utils.parametrizations.spectral_norm(conv)
        layers.append(conv)
        if not last or final_activation:
            layers.append(activation())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        ch = out
    if last_weight_scale is not None:
        final = layers[-1] if isinstance(layers[-1], nn.Conv2d) else None
        if final is None:
            raise ValueError("last_weight_scale needs the stack to end in a convolution (final_activation=False)")
        with torch.no_grad():
            w = final.parametrizations.weight.original if spectral_norm else final.weight
            w.mul_(last_weight_scale)
            final.bias.zero_()
    return nn.Sequential(*layers)


def heteroscedastic_nll_loss(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-voxel heteroscedastic Gaussian negative log-likelihood (without the constant), a training loss.

    ``0.5 * mean(log_var + (target - mean)^2 / exp(log_var))``. Not the calibration metric
    :func:`petuq_sirf.uq.calibration.gaussian_nll`, which scores a predictive mean and std.
    """
    return 0.5 * (log_var + (target - mean) ** 2 * torch.exp(-log_var)).mean()


__all__ = ["conv_stack", "heteroscedastic_nll_loss"]
