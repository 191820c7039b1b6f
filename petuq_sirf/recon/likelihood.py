"""The Poisson log-likelihood and deviance, written once and used by every reconstruction and loss."""

from __future__ import annotations

import torch

_TINY = 1e-12


def poisson_log_likelihood(y: torch.Tensor, ybar: torch.Tensor, expected_scale: float = 1.0) -> torch.Tensor:
    """``sum(y log ybar - c ybar)`` over the trailing three (data) axes; ``c = expected_scale``.

    Terms with ``y = 0`` contribute ``-c ybar`` only; ``ybar`` is floored at 1e-12 inside the log.
    ``expected_scale`` is ``sum(w) / n`` in the weighted-likelihood bootstrap (1 otherwise).
    """
    log_term = torch.where(y > 0, y * torch.log(ybar.clamp_min(_TINY)), torch.zeros_like(ybar))
    return (log_term - expected_scale * ybar).sum(dim=(-3, -2, -1))


def poisson_gradient_ratio(y: torch.Tensor, ybar: torch.Tensor) -> torch.Tensor:
    """``y / ybar`` with 0 where ``y = 0`` (the data term of the EM update and of the gradient)."""
    return torch.where(y > 0, y / ybar.clamp_min(_TINY), torch.zeros_like(ybar))


def poisson_deviance(y: torch.Tensor, ybar: torch.Tensor) -> torch.Tensor:
    """Per-bin Poisson deviance ``2 (y log(y / ybar) - y + ybar)`` (``2 ybar`` where ``y = 0``), same shape as ``y``.

    Twice the log-likelihood ratio of the saturated model (``ybar = y``) against ``ybar``: zero for a perfect fit,
    about 1 per bin when ``ybar`` is the true mean and the counts are not small. ``ybar`` is floored at 1e-12.
    """
    mu = ybar.clamp_min(_TINY)
    term = torch.where(y > 0, y * torch.log(y.clamp_min(_TINY) / mu) - y + mu, mu)
    return 2 * term
