"""Pyro machinery shared by the BNN denoiser and its tests: priors on weights, SVI, guide posteriors.

:func:`bayesianize` turns any ``torch.nn.Module`` into a ``PyroModule`` whose parameters are
``PyroSample`` sites with ``Normal(0, prior_scale)`` priors (site names = parameter names, e.g.
``body.0.weight``). :func:`fit_svi` runs SVI with ``Trace_ELBO`` and an ``AutoNormal`` (mean-field)
guide; the model must scale the likelihood by ``dataset_size / batch_size`` (a subsampled
``pyro.plate``), so the ELBO is that of the full data set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from operator import attrgetter

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_value
from pyro.nn import PyroSample
from pyro.nn.module import to_pyro_module_
from torch import nn
from tqdm.auto import tqdm


def bayesianize(module: nn.Module, prior_scale: float = 1.0) -> nn.Module:
    """In place: every parameter of ``module`` becomes a ``PyroSample`` with prior ``N(0, prior_scale^2)``.

    Returns the module (now a ``PyroModule``); its state before the call is lost, so pass a copy.
    """
    if not prior_scale > 0:
        raise ValueError(f"prior_scale must be > 0, got {prior_scale}")
    to_pyro_module_(module)
    for m in module.modules():
        for name, p in list(m.named_parameters(recurse=False)):
            prior = dist.Normal(torch.zeros((), dtype=p.dtype), torch.tensor(prior_scale, dtype=p.dtype))
            setattr(m, name, PyroSample(prior.expand(p.shape).to_event(p.dim())))
    return module


def make_guide(
    model: Callable, init_values: dict[str, torch.Tensor] | None = None, init_scale: float = 1e-3
) -> AutoNormal:
    """A mean-field Normal guide, its locations initialised at ``init_values`` (e.g. a trained network)."""
    if init_values:
        return AutoNormal(model, init_loc_fn=init_to_value(values=init_values), init_scale=init_scale)
    return AutoNormal(model, init_scale=init_scale)


def fit_svi(
    model: Callable,
    guide: AutoNormal,
    batches: Iterator[tuple],
    num_steps: int,
    lr: float = 1e-3,
    progress: bool = False,
    clip_norm: float | None = 10.0,
    lr_final: float | None = None,
    scale_lr_factor: float = 1.0,
) -> list[float]:
    """``num_steps`` SVI steps with Adam (``ClippedAdam``); ``batches`` yields ``model`` argument tuples.

    ``lr_final``: decay the learning rate geometrically to this value at the last step (default: constant).
    ``scale_lr_factor``: learning-rate multiplier of the guide's scale parameters (a guide started at a
    trained network needs its locations to move little and its scales a lot).

    Returns the loss (negative ELBO) per step. The global Pyro parameter store is cleared first.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    pyro.clear_param_store()
    lrd = 1.0 if lr_final is None else (lr_final / lr) ** (1.0 / num_steps)
    clip = clip_norm if clip_norm else 1e12

    def per_param(module_name: str, param_name: str) -> dict:
        rate = lr * scale_lr_factor if "scales" in param_name else lr
        return {"lr": rate, "lrd": lrd, "clip_norm": clip}

    opt = pyro.optim.ClippedAdam(per_param)
    svi = SVI(model, guide, opt, loss=Trace_ELBO())
    losses = []
    bar = tqdm(range(num_steps), desc="SVI", disable=not progress or None)
    for _ in bar:
        loss = svi.step(*next(batches))
        losses.append(float(loss))
        if progress:
            bar.set_postfix(elbo=f"{-loss:.4g}")
    return losses


def guide_posterior(guide: AutoNormal) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-site posterior location and scale of a fitted ``AutoNormal`` (detached copies)."""
    locs, scales = {}, {}
    for name, _site in guide.prototype_trace.iter_stochastic_nodes():
        # AutoNormal keeps one PyroParam per site under ``guide.locs`` / ``guide.scales`` (dotted names nest)
        loc, scale = attrgetter(name)(guide.locs), attrgetter(name)(guide.scales)
        locs[name] = loc.detach().clone()
        scales[name] = scale.detach().clone()
    return locs, scales
