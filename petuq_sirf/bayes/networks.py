"""A compact heteroscedastic CNN denoiser: residual mean and per-voxel log-variance.

Works on normalised 2D images ``(B, y, x)`` (the caller divides by :func:`slice_mean_scale`). The body is a
stack of dilated 3x3 convolutions (receptive field 19 voxels with the default dilations); the head is a
1x1 convolution to two channels: ``mean = input + head[0]`` and
``log_var = min_log_var + softplus(head[1] - min_log_var)`` (smoothly bounded below).

Dose conditioning (``NetworkConfig(dose_input=True)``): a second input channel holds
``log10(dose fraction)`` (dose as a fraction of the standard dose of the training set, constant over
the image), so one network trained over 1-100 % of the dose can relax its smoothing and shrink its
predicted variance as the counts grow; such a network needs the dose at every call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from petuq_sirf.inference.network_limits import (
    MAX_CHANNELS,
    MAX_DILATION,
    MAX_LAYERS,
    check_parameter_count,
    check_range,
    conv_stack_parameters,
)
from petuq_sirf.networks.blocks import conv_stack, heteroscedastic_nll_loss


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture. ``dropout`` > 0 adds element-wise dropout after each hidden activation (MC dropout)."""

    width: int = 24
    dilations: tuple[int, ...] = (1, 2, 3, 2, 1)
    dropout: float = 0.0
    min_log_var: float = -9.0
    dose_input: bool = False

    def __post_init__(self) -> None:
        if self.width < 1 or not self.dilations:
            raise ValueError(f"invalid network: width {self.width}, dilations {self.dilations}")
        check_range("network width", self.width, 1, MAX_CHANNELS)
        check_range("number of network layers (dilations)", len(self.dilations), 1, MAX_LAYERS)
        for d in self.dilations:
            check_range("network dilation", d, 1, MAX_DILATION)
        body = (
            conv_stack_parameters(1, self.width, len(self.dilations) + 1, self.width)
            - (self.width * 9 + 1) * self.width
        )
        check_parameter_count("the denoiser network", body + (self.width + 1) * 2)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return {**asdict(self), "dilations": list(self.dilations)}

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        return cls(**{**d, "dilations": tuple(d["dilations"])})


class HeteroscedasticCNN(nn.Module):
    """``forward(x (B, y, x)) -> (mean (B, y, x), log_var (B, y, x))`` on normalised images."""

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetworkConfig()
        c = self.config
        self.body = conv_stack(
            2 if c.dose_input else 1,
            c.width,
            c.width,
            len(c.dilations),
            nn.ReLU,
            dilations=c.dilations,
            dropout=c.dropout,
            final_activation=True,
        )
        self.head = nn.Conv2d(c.width, 2, 1)
        with torch.no_grad():  # start close to the identity with unit variance
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    def features(self, x: torch.Tensor, dose: torch.Tensor | float | None = None) -> torch.Tensor:
        """Body activations ``(B, width, y, x)``; ``dose``: fraction(s) of the standard dose, scalar or ``(B,)``
        (required when ``config.dose_input``, ignored otherwise)."""
        if x.dim() != 3:
            raise ValueError(f"expected images (B, y, x), got shape {tuple(x.shape)}")
        inp = x.unsqueeze(1)
        if self.config.dose_input:
            inp = torch.cat([inp, dose_channel(dose, x)], 1)
        return self.body(inp)

    def head_output(
        self,
        x: torch.Tensor,
        features: torch.Tensor,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance from features; ``weight (2, width)`` / ``bias (2,)`` override the head."""
        w = self.head.weight if weight is None else weight.reshape(2, -1, 1, 1)
        b = self.head.bias if bias is None else bias
        out = F.conv2d(features, w, b)
        return self.finish(x, out)

    def finish(self, x: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``out (..., 2, y, x)`` head output -> (mean, log_var)."""
        m = self.config.min_log_var
        return x + out[..., 0, :, :], m + F.softplus(out[..., 1, :, :] - m)

    def forward(self, x: torch.Tensor, dose: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head_output(x, self.features(x, dose))


def dose_channel(dose: torch.Tensor | float | None, x: torch.Tensor) -> torch.Tensor:
    """``log10(dose)`` as a constant channel ``(B, 1, y, x)`` for images ``x (B, y, x)``."""
    if dose is None:
        raise ValueError("this denoiser is dose-conditioned: give the dose as a fraction of the standard dose")
    d = torch.as_tensor(dose, dtype=x.dtype, device=x.device).reshape(-1)
    if d.numel() == 1:
        d = d.expand(x.shape[0])
    if d.numel() != x.shape[0]:
        raise ValueError(f"got {d.numel()} dose values for {x.shape[0]} images")
    if not (torch.isfinite(d).all() and (d > 0).all()):
        raise ValueError("dose fractions must be finite and > 0")
    return torch.log10(d).view(-1, 1, 1, 1).expand(-1, 1, *x.shape[-2:])


gaussian_nll_loss = heteroscedastic_nll_loss  # the name this module exported
