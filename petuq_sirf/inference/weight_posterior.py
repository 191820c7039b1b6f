"""Bayesian CNN blocks: a mean-field Gaussian posterior over chosen weights of a network, fitted by SVI.

The Pyro model puts ``Normal(0, prior_scale)`` priors on the chosen parameters (sites named
``"w:" + parameter name``), calls the network with those weights via
``torch.func.functional_call`` and lets a user function add the likelihood (``pyro.factor`` or an
observed ``pyro.sample``). The guide is a mean-field Normal (as Pyro's ``AutoNormal``, written out so
the locations can be frozen) initialised at the trained (point) weights with a small scale, so SVI
starts from a good network and learns how far each weight may move. Other parameters stay at their trained values.

After fitting, the posterior is kept as plain tensors (:class:`WeightPosterior`: ``loc``, ``scale``
per parameter), so drawing a network from it needs no Pyro state and can be saved in safetensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Predictive
from pyro.nn import PyroModule, PyroParam, pyro_method
from torch import nn
from torch.func import functional_call

from petuq_sirf.inference.rng import seeded
from petuq_sirf.inference.svi import SVIFitter
from petuq_sirf.io.weights import WeightsError, load_weights, read_record, save_weights

_SITE = "w:"


@dataclass
class WeightPosterior:
    """Independent Normal posteriors ``N(loc[name], scale[name]^2)`` over parameters of a network."""

    loc: dict[str, torch.Tensor]
    scale: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        if set(self.loc) != set(self.scale):
            raise ValueError("loc and scale must name the same parameters")
        for k in self.loc:
            if self.loc[k].shape != self.scale[k].shape or (self.scale[k] < 0).any():
                raise ValueError(f"parameter {k!r}: loc/scale shapes differ or negative scale")

    def sample(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """One weight draw ``{name: tensor}``."""
        return {
            k: self.loc[k] + self.scale[k] * torch.randn(self.loc[k].shape, generator=generator).to(self.loc[k])
            for k in self.loc
        }

    def mean(self) -> dict[str, torch.Tensor]:
        return dict(self.loc)

    def to(self, device: torch.device | str) -> WeightPosterior:
        return WeightPosterior(
            {k: v.to(device) for k, v in self.loc.items()}, {k: v.to(device) for k, v in self.scale.items()}
        )

    def tensors(self, prefix: str = "posterior.") -> dict[str, torch.Tensor]:
        """Flat dict for safetensors: ``prefix + "loc." + name`` and ``prefix + "scale." + name``."""
        out = {f"{prefix}loc.{k}": v.contiguous() for k, v in self.loc.items()}
        out.update({f"{prefix}scale.{k}": v.contiguous() for k, v in self.scale.items()})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "posterior.") -> WeightPosterior:
        loc = {k[len(prefix) + 4 :]: v for k, v in tensors.items() if k.startswith(prefix + "loc.")}
        scale = {k[len(prefix) + 6 :]: v for k, v in tensors.items() if k.startswith(prefix + "scale.")}
        if not loc:
            raise ValueError(f"no posterior tensors with prefix {prefix!r}")
        return cls(loc, scale)


@dataclass
class ParticlePosterior:
    """Equally weighted weight draws (e.g. resampled AIS particles): ``draws[name]`` ``(S, *shape)``.

    Used like :class:`WeightPosterior`: :meth:`sample` returns one of the draws (uniformly at random).
    """

    draws: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        counts = {v.shape[0] for v in self.draws.values()}
        if not self.draws or len(counts) != 1:
            raise ValueError("draws must be a non-empty dict of tensors with the same number of draws")

    @property
    def num_draws(self) -> int:
        return next(iter(self.draws.values())).shape[0]

    def sample(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        i = int(torch.randint(self.num_draws, (1,), generator=generator))
        return {k: v[i] for k, v in self.draws.items()}

    def mean(self) -> dict[str, torch.Tensor]:
        return {k: v.mean(0) for k, v in self.draws.items()}

    def to(self, device: torch.device | str) -> ParticlePosterior:
        return ParticlePosterior({k: v.to(device) for k, v in self.draws.items()})

    def tensors(self, prefix: str = "posterior.") -> dict[str, torch.Tensor]:
        """Flat dict for safetensors: ``prefix + "draws." + name``."""
        return {f"{prefix}draws.{k}": v.contiguous() for k, v in self.draws.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "posterior.") -> ParticlePosterior:
        draws = {k[len(prefix) + 6 :]: v for k, v in tensors.items() if k.startswith(prefix + "draws.")}
        if not draws:
            raise ValueError(f"no weight draws with prefix {prefix!r}")
        return cls(draws)


@dataclass
class PosteriorImage:
    """Summary over posterior samples; images ``(..., z, y, x)`` in activity units.

    ``samples`` ``(S, ..., z, y, x)`` include the aleatoric noise; ``std`` is the total
    ``sqrt(epistemic^2 + aleatoric^2)``.
    """

    mean: torch.Tensor
    std: torch.Tensor
    epistemic_std: torch.Tensor
    aleatoric_std: torch.Tensor
    samples: torch.Tensor

    def interval(self, level: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
        """Central interval from the sample quantiles."""
        if not 0 < level < 1:
            raise ValueError(f"interval level must be in (0, 1), got {level}")
        q = torch.tensor([0.5 - level / 2, 0.5 + level / 2], dtype=self.samples.dtype)
        lo, hi = torch.quantile(self.samples, q.to(self.samples.device), dim=0)
        return lo, hi


def call_with(net: nn.Module, weights: dict[str, torch.Tensor], *args, **kwargs):
    """``net(*args, **kwargs)`` with some parameters replaced by ``weights`` (others unchanged)."""
    return functional_call(net, weights, args, kwargs, strict=False)


@dataclass
class SVIConfig:
    """SVI settings.

    ``prior_scale``: std of the ``N(0, s^2)`` weight priors; ``init_scale``: initial std of the guide;
    ``lr`` / ``scale_lr``: Adam rates of the locations and the log-scales; ``learn_loc`` False keeps
    the locations at the trained weights and learns only the scales (a variational Laplace-type
    posterior; it keeps draws close to a network known to satisfy a constraint); ``seed``: Pyro's
    sampling (on a fork of torch's global RNG, see :class:`~petuq_sirf.inference.svi.SVIFitter`).
    """

    num_steps: int = 200
    lr: float = 1e-4
    scale_lr: float = 1e-2
    prior_scale: float = 1.0
    init_scale: float = 1e-3
    learn_loc: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_steps < 1 or not self.prior_scale > 0 or not self.init_scale > 0:
            raise ValueError("num_steps >= 1, prior_scale > 0 and init_scale > 0 are required")


def _nested_set(root: PyroModule, dotted: str, value) -> None:
    """``root.a.b.c = value`` for ``dotted = "a.b.c"``, creating the intermediate ``PyroModule``s."""
    *parents, last = dotted.split(".")
    module = root
    for part in parents:
        if not isinstance(getattr(module, part, None), PyroModule):
            setattr(module, part, PyroModule())
        module = getattr(module, part)
    setattr(module, last, value)


class BayesianNetwork(PyroModule):
    """Pyro model of ``net`` with independent ``Normal(0, prior_scale^2)`` priors on its parameters ``names``.

    The sample sites are ``"w:" + name``; the network runs with the sampled weights through
    ``torch.func.functional_call`` (the other parameters keep their values).

    - ``forward(*batch)``: the training model; ``likelihood(call, *batch)`` adds the (minibatch-scaled)
      log-likelihood to the trace (``pyro.factor`` or an observed ``pyro.sample``), ``call(*args)`` running
      ``net`` with the sampled weights.
    - :meth:`predictive` ``(*args)``: runs ``net(*args)`` with the sampled weights and records its output
      ``(mean, log_var)`` as the deterministic sites ``"mean"`` and ``"log_var"``; the model that
      ``pyro.infer.Predictive`` conditions on weight draws (:func:`predictive_outputs`).
    """

    def __init__(
        self,
        net: nn.Module,
        names: list[str],
        prior_scale: float = 1.0,
        likelihood: Callable[..., None] | None = None,
    ) -> None:
        super().__init__()
        params = dict(net.named_parameters())
        missing = [n for n in names if n not in params]
        if missing or not names:
            raise ValueError(f"unknown or no parameter names for the posterior: {missing or names}")
        if not prior_scale > 0:
            raise ValueError(f"prior_scale must be > 0, got {prior_scale}")
        self._wrapped = (net,)  # not a sub-module: Pyro would register a plain sub-module's parameters
        self.names = list(names)
        self.prior_scale = prior_scale
        self.likelihood = likelihood

    @property
    def net(self) -> nn.Module:
        """The network (held, not owned: its parameters never enter a Pyro param store)."""
        return self._wrapped[0]

    def sample_weights(self) -> dict[str, torch.Tensor]:
        """One draw of the weights from the prior (or whatever the enclosing Pyro handlers put there)."""
        params = dict(self.net.named_parameters())
        weights = {}
        for n in self.names:
            p = params[n]
            zero = torch.zeros((), dtype=p.dtype, device=p.device)
            prior = dist.Normal(zero, torch.full((), self.prior_scale, dtype=p.dtype, device=p.device))
            weights[n] = pyro.sample(_SITE + n, prior.expand(p.shape).to_event(p.dim()))
        return weights

    def forward(self, *batch) -> None:
        if self.likelihood is None:
            raise ValueError("this BayesianNetwork has no likelihood: pass one to fit, or use predictive()")
        weights = self.sample_weights()
        self.likelihood(lambda *a, **k: call_with(self.net, weights, *a, **k), *batch)

    @pyro_method
    def predictive(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.sample_weights()
        mean, log_var = call_with(self.net, weights, *args, **kwargs)
        pyro.deterministic("mean", mean)
        pyro.deterministic("log_var", log_var)
        return mean, log_var


class MeanFieldWeightGuide(PyroModule):
    """Guide object of a :class:`BayesianNetwork`: ``w:name ~ N(locs.name, exp(log_scales.name)^2)``.

    The locations start at the network's current (trained) weights, the scales at ``init_scale``;
    ``learn_loc`` False keeps the locations fixed there (they are then plain tensors, not parameters).
    After fitting, :meth:`posterior` is the plain-tensor :class:`WeightPosterior`.
    """

    def __init__(self, model: BayesianNetwork, init_scale: float = 1e-3, learn_loc: bool = True) -> None:
        super().__init__()
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        params = dict(model.net.named_parameters())
        self.names = list(model.names)
        self.learn_loc = learn_loc
        self.point = {n: params[n].detach().clone() for n in self.names}
        self.locs = PyroModule()
        self.log_scales = PyroModule()
        for n, p in self.point.items():
            _nested_set(self.log_scales, n, PyroParam(torch.full_like(p, math.log(init_scale))))
            if learn_loc:
                _nested_set(self.locs, n, PyroParam(p.clone()))

    def loc(self, name: str) -> torch.Tensor:
        return attrgetter(name)(self.locs) if self.learn_loc else self.point[name]

    def scale(self, name: str) -> torch.Tensor:
        return torch.exp(attrgetter(name)(self.log_scales))

    def forward(self, *batch) -> None:
        for n, p in self.point.items():
            log_scale = attrgetter(n)(self.log_scales)
            pyro.sample(_SITE + n, dist.Normal(self.loc(n), torch.exp(log_scale)).to_event(p.dim()))

    def posterior(self) -> WeightPosterior:
        """The fitted posterior as detached tensors."""
        with torch.no_grad():
            return WeightPosterior(
                {n: self.loc(n).detach().clone() for n in self.names},
                {n: self.scale(n).detach().clone() for n in self.names},
            )


def fit_weight_posterior(
    net: nn.Module,
    names: list[str],
    likelihood: Callable[..., None],
    batches: Iterator[tuple],
    config: SVIConfig | None = None,
    progress: bool = False,
) -> tuple[WeightPosterior, list[float]]:
    """Fit a mean-field posterior over the parameters ``names`` of ``net`` by SVI (``Trace_ELBO``).

    ``likelihood(call, *batch)`` must add the (minibatch-scaled) log-likelihood to the Pyro trace;
    ``call(*args)`` runs ``net`` with the sampled weights. ``batches`` yields the ``batch`` tuples.
    The model is a :class:`BayesianNetwork`, the guide a :class:`MeanFieldWeightGuide`, fitted by an
    :class:`~petuq_sirf.inference.svi.SVIFitter` (its own param store; seeded by ``config.seed`` on a fork
    of the global RNG). Returns the posterior and the loss (negative ELBO) per step.
    """
    cfg = config or SVIConfig()
    model = BayesianNetwork(net, names, cfg.prior_scale, likelihood)
    guide = MeanFieldWeightGuide(model, cfg.init_scale, cfg.learn_loc)
    grads = {n: p.requires_grad for n, p in net.named_parameters()}
    for p in net.parameters():
        p.requires_grad_(False)
    try:
        fitter = SVIFitter(model, guide, lr=cfg.lr, scale_lr=cfg.scale_lr, clip_norm=10.0, seed=cfg.seed)
        losses = fitter.fit(batches, cfg.num_steps, progress, desc="SVI (weight posterior)")
    finally:
        for n, p in net.named_parameters():
            p.requires_grad_(grads[n])
    return guide.posterior(), losses


def predictive_outputs(
    net: nn.Module,
    draws: dict[str, torch.Tensor],
    *args,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, log_var)`` of ``net(*args)`` for each weight draw, each ``(S, *output shape)``.

    ``draws[name]`` ``(S, *shape)`` are posterior draws of some parameters of ``net`` (the others keep
    their values). Runs ``pyro.infer.Predictive`` on the :class:`BayesianNetwork` of ``net`` conditioned
    on the draws (no gradients; Pyro's internal draws on a fork of the global RNG, which is left as it was).
    """
    if not draws:
        raise ValueError("no weight draws")
    counts = {v.shape[0] for v in draws.values()}
    if len(counts) != 1:
        raise ValueError(f"weight draws of different counts: {sorted(counts)}")
    model = BayesianNetwork(net, list(draws))
    samples = {_SITE + n: v for n, v in draws.items()}
    predictive = Predictive(model.predictive, posterior_samples=samples, return_sites=("mean", "log_var"))
    with seeded(None):
        out = predictive(*args, **kwargs)
    return out["mean"], out["log_var"]


WEIGHTS_FORMAT = "petuq-network-weights"
WEIGHTS_VERSION = 1


def save_posterior(
    path: str | Path,
    net: nn.Module,
    posterior: WeightPosterior | ParticlePosterior | None,
    metadata: dict[str, str],
) -> Path:
    """Write the point weights (``net.``) and the posterior (``posterior.``) as a weights folder.

    The folder (``model.safetensors`` + ``config.json`` with format version and SHA-256, see
    :mod:`petuq_sirf.io.weights`) keeps ``metadata`` (strings, e.g. ``{"info": json}``) in its record.
    """
    tensors = {f"net.{k}": v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    if posterior is not None:
        tensors.update({k: v.cpu() for k, v in posterior.tensors().items()})
    return save_weights(path, tensors, WEIGHTS_FORMAT, WEIGHTS_VERSION, {"metadata": dict(metadata)})


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a weights folder, or of a single ``.safetensors`` file of the first releases."""
    path = Path(path)
    if path.is_dir():
        tensors, record = load_weights(path, WEIGHTS_FORMAT, WEIGHTS_VERSION)
        return tensors, dict(record.get("metadata", {}))
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from exc


def read_weights_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a weights folder or legacy file without loading its tensors (a folder is still verified)."""
    path = Path(path)
    if path.is_dir():
        return dict(read_record(path, WEIGHTS_FORMAT, WEIGHTS_VERSION).get("metadata", {}))
    return read_weights(path)[1]


def convert_weights_file(path: str | Path, folder: str | Path) -> Path:
    """Rewrite a single-file ``.safetensors`` of the first releases as a weights folder (same tensors, metadata)."""
    tensors, metadata = read_weights(path)
    return save_weights(folder, tensors, WEIGHTS_FORMAT, WEIGHTS_VERSION, {"metadata": metadata})


def load_posterior(
    path: str | Path, net: nn.Module
) -> tuple[WeightPosterior | ParticlePosterior | None, dict[str, str]]:
    """Load the point weights into ``net`` and return the posterior (or None) and the metadata.

    ``path`` is a weights folder (or a legacy single file). The posterior is a
    :class:`ParticlePosterior` when the file holds ``posterior.draws.*`` (AIS).
    """
    tensors, metadata = read_weights(path)
    state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
    net.load_state_dict(state)
    if any(k.startswith("posterior.draws.") for k in tensors):
        return ParticlePosterior.from_tensors(tensors), metadata
    has_post = any(k.startswith("posterior.") for k in tensors)
    return (WeightPosterior.from_tensors(tensors) if has_post else None), metadata
