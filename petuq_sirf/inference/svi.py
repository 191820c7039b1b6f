"""The package's one SVI stack: :class:`SVIFitter`, used by the Bayesian denoiser and the reconstruction networks.

A fitter holds a Pyro ``model`` and a ``guide`` object (``PyroModule``s: an ``AutoNormal``, or the
weight guide of :mod:`petuq_sirf.inference.weight_posterior`), runs ``Trace_ELBO`` with ``ClippedAdam``
(per-parameter rates for the guide's locations and scales) and keeps **its own parameter store**: while
it fits, its parameters are swapped into Pyro's global store and the user's entries are put back on exit,
untouched (Pyro's public ``ParamStoreDict.get_state`` / ``set_state``). Pyro draws its samples from
torch's global RNG: the fitter runs on a fork of it (:func:`petuq_sirf.inference.rng.seeded`), seeded with
its ``seed``, so the caller's RNG state is unchanged and the same seed gives the same fit.

:func:`bayesianize` turns any ``torch.nn.Module`` into a ``PyroModule`` whose parameters are
``PyroSample`` sites with ``Normal(0, prior_scale)`` priors (site names = parameter names, e.g.
``body.0.weight``); :func:`make_guide` is a mean-field ``AutoNormal`` started at given values. The model
must scale the likelihood by ``dataset_size / batch_size`` (a subsampled ``pyro.plate``), so the ELBO is
that of the full data set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from operator import attrgetter

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_value
from pyro.nn import PyroSample
from pyro.nn.module import to_pyro_module_
from pyro.params.param_store import ParamStoreDict
from torch import nn
from tqdm.auto import tqdm

from petuq_sirf.inference.rng import seeded

SCALE_PARAMETERS = ("scales", "log_scales")
"""Names of the guide sub-modules holding scale parameters (``AutoNormal.scales``, the weight guide's
``log_scales``): a parameter whose store name has one of them as its first or second component gets the
scale learning rate."""


def is_scale_parameter(name: str) -> bool:
    """Whether the parameter-store entry ``name`` is a guide scale (see :data:`SCALE_PARAMETERS`)."""
    return any(part in SCALE_PARAMETERS for part in name.split(".")[:2])


class SVIFitter:
    """SVI of ``model`` with ``guide`` (``Trace_ELBO``, ``ClippedAdam``), with its own Pyro parameter store.

    Args:
        model, guide: Pyro callables (``PyroModule``s); ``fit`` passes each batch tuple to both.
        lr: Adam rate of the guide's locations (and of every parameter that is not a scale).
        scale_lr: rate of the guide's scales (:func:`is_scale_parameter`); default ``lr``.
        lr_final: decay both rates geometrically to ``lr_final / lr`` times their start over the steps of
            each :meth:`fit` (default: constant).
        clip_norm: element-wise gradient clip of ``ClippedAdam`` (None: no clipping).
        seed: seed of Pyro's sampling (on a fork of torch's global RNG); None continues the current global
            state (still restored afterwards), for callers that seed a longer computation themselves.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        lr: float = 1e-3,
        scale_lr: float | None = None,
        lr_final: float | None = None,
        clip_norm: float | None = 10.0,
        seed: int | None = 0,
    ) -> None:
        if not lr > 0 or (scale_lr is not None and not scale_lr > 0) or (lr_final is not None and not lr_final > 0):
            raise ValueError(f"learning rates must be > 0, got lr {lr}, scale_lr {scale_lr}, lr_final {lr_final}")
        self.model = model
        self.guide = guide
        self.lr = lr
        self.scale_lr = lr if scale_lr is None else scale_lr
        self.lr_final = lr_final
        self.clip_norm = clip_norm
        self.seed = seed
        self.losses: list[float] = []
        self._state: dict = {"params": {}, "constraints": {}}

    @contextmanager
    def param_store(self) -> Iterator[ParamStoreDict]:
        """Pyro's global store holding this fitter's parameters (and only them) inside the block.

        The entries the store held before are restored on exit, the same tensors, whatever the block did.
        ``module_local_params`` is off inside the block (the guide's ``PyroParam``s live in the store).
        """
        store = pyro.get_param_store()
        user = store.get_state()
        store.clear()
        store.set_state(self._state)
        try:
            with pyro.settings.context(module_local_params=False):
                yield store
        finally:
            self._state = store.get_state()
            store.clear()
            store.set_state(user)
            for name in list(store.keys()):
                store[name]  # re-attaches ``.unconstrained()`` (get_state drops it from unconstrained params)

    def _optim_args(self, num_steps: int) -> Callable[[str, str], dict]:
        lrd = 1.0 if self.lr_final is None else (self.lr_final / self.lr) ** (1.0 / num_steps)
        clip = self.clip_norm if self.clip_norm else 1e12

        def per_param(_module_name: str, param_name: str) -> dict:
            rate = self.scale_lr if is_scale_parameter(param_name) else self.lr
            return {"lr": rate, "lrd": lrd, "clip_norm": clip}

        return per_param

    def fit(self, batches: Iterator[tuple], num_steps: int, progress: bool = False, desc: str = "SVI") -> list[float]:
        """``num_steps`` SVI steps on ``next(batches)``; returns the loss (negative ELBO) per step."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        svi = SVI(self.model, self.guide, pyro.optim.ClippedAdam(self._optim_args(num_steps)), loss=Trace_ELBO())
        losses = []
        with self.param_store(), seeded(self.seed):
            bar = tqdm(range(num_steps), desc=desc, disable=not progress or None)
            for _ in bar:
                losses.append(float(svi.step(*next(batches))))
                if progress:
                    bar.set_postfix(elbo=f"{-losses[-1]:.4g}")
        self.losses.extend(losses)
        return losses


def bayesianize(module: nn.Module, prior_scale: float = 1.0) -> nn.Module:
    """In place: every parameter of ``module`` becomes a ``PyroSample`` with prior ``N(0, prior_scale^2)``.

    Returns the module (now a ``PyroModule``); its state before the call is lost, so pass a copy.
    """
    if not prior_scale > 0:
        raise ValueError(f"prior_scale must be > 0, got {prior_scale}")
    to_pyro_module_(module)
    for m in module.modules():
        for name, p in list(m.named_parameters(recurse=False)):
            zero = torch.zeros((), dtype=p.dtype, device=p.device)
            prior = dist.Normal(zero, torch.full((), prior_scale, dtype=p.dtype, device=p.device))
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
    seed: int | None = None,
) -> list[float]:
    """``num_steps`` SVI steps by an :class:`SVIFitter` (its own param store; the global one is untouched).

    ``scale_lr_factor``: learning-rate multiplier of the guide's scales (a guide started at a trained
    network needs its locations to move little and its scales a lot). ``seed``: see :class:`SVIFitter`.
    Returns the loss (negative ELBO) per step.
    """
    fitter = SVIFitter(model, guide, lr, lr * scale_lr_factor, lr_final, clip_norm, seed)
    return fitter.fit(batches, num_steps, progress)


def guide_posterior(guide: AutoNormal) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-site posterior location and scale of a fitted ``AutoNormal`` (detached copies).

    Reads the guide's public ``locs`` / ``scales`` modules (one ``PyroParam`` per site; dotted names nest).
    """
    locs, scales = {}, {}
    for name, _site in guide.prototype_trace.iter_stochastic_nodes():
        locs[name] = attrgetter(name)(guide.locs).detach().clone()
        scales[name] = attrgetter(name)(guide.scales).detach().clone()
    return locs, scales
