"""MLEM and OSEM on any :class:`~petuq_sirf.operators.AcquisitionModel`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from petuq_sirf.operators.acquisition import AcquisitionModel, check_data
from petuq_sirf.recon.likelihood import poisson_gradient_ratio, poisson_log_likelihood


@dataclass
class Reconstruction:
    """An image ``(z, y, x)`` and the objective after each iteration.

    Iterative solvers that track convergence (:func:`~petuq_sirf.recon.map_rdp.map_rdp`) also set
    ``iterations_run``, ``relative_update`` (``||x_k - x_(k-1)|| / ||x_k||`` of the last iteration) and
    ``stop_reason`` (``"tolerance"``, ``"no ascent"``, or ``None`` when every iteration ran).
    """

    image: torch.Tensor
    objective: list[float] = field(default_factory=list)
    iterations_run: int | None = None
    relative_update: float | None = None
    stop_reason: str | None = None


def _initial_image(model: AcquisitionModel, x0: torch.Tensor | None) -> torch.Tensor:
    if x0 is None:
        return torch.ones(model.image_shape, device=model.device)
    x0 = torch.as_tensor(x0, dtype=torch.float32, device=model.device)
    if tuple(x0.shape) != tuple(model.image_shape):
        raise ValueError(f"initial image has shape {tuple(x0.shape)}, expected {model.image_shape}")
    if (x0 < 0).any() or not torch.isfinite(x0).all():
        raise ValueError("initial image must be finite and >= 0")
    return x0.clone()


def em_update(model: AcquisitionModel, y: torch.Tensor, x: torch.Tensor, sensitivity: torch.Tensor) -> torch.Tensor:
    """One EM step ``x / s * A^T(m y / ybar)`` (zero where the sensitivity is zero)."""
    ratio = poisson_gradient_ratio(y, model.forward(x))
    back = model.adjoint(ratio)
    return torch.where(sensitivity > 0, x * back / sensitivity.clamp_min(1e-12), torch.zeros_like(x))


def osem(
    model: AcquisitionModel,
    y: torch.Tensor,
    num_iterations: int = 10,
    num_subsets: int = 1,
    x0: torch.Tensor | None = None,
    track_objective: bool = False,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> Reconstruction:
    """Ordered-subsets EM with interleaved view subsets (``num_subsets = 1`` is MLEM).

    ``y``: measured prompts, shape ``model.data_shape``. Returns the image after
    ``num_iterations`` full passes; ``objective`` holds the Poisson log-likelihood per pass
    when ``track_objective``.
    """
    y = check_data(y, model.data_shape, "measured prompts").to(model.device)
    if num_iterations < 0:
        raise ValueError(f"number of iterations must be >= 0, got {num_iterations}")
    x = _initial_image(model, x0)
    if num_subsets == 1:
        subsets = [(model, y)]
    else:
        subsets = []
        for i in range(num_subsets):
            sub = model.subset(i, num_subsets)
            views = torch.arange(i, model.data_shape[1], num_subsets, device=y.device)
            subsets.append((sub, y[:, views]))
    sens = [m.sensitivity() for m, _ in subsets]
    result = Reconstruction(x)
    with torch.no_grad():
        for it in tqdm(range(num_iterations), desc=f"OSEM ({num_subsets} subsets)", disable=not progress or None):
            for (m, ys), s in zip(subsets, sens):
                x = em_update(m, ys, x, s)
            if track_objective:
                result.objective.append(float(poisson_log_likelihood(y, model.forward(x))))
            if callback is not None:
                callback(it, x)
    result.image = x
    return result


def mlem(model: AcquisitionModel, y: torch.Tensor, num_iterations: int = 50, **kwargs) -> Reconstruction:
    """Maximum-likelihood EM (OSEM with one subset)."""
    return osem(model, y, num_iterations=num_iterations, num_subsets=1, **kwargs)
