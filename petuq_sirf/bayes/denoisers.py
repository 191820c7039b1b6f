"""Bayesian denoisers behind one interface: ``fit(dataset)``, then ``predict(noisy, num_samples)``.

Methods (``DenoiserConfig.method``):

- ``cnn``: the heteroscedastic CNN, a point estimate (aleatoric uncertainty only).
- ``mc_dropout``: the same network with dropout kept on at prediction time.
- ``ensemble``: ``ensemble_size`` independently initialised networks.
- ``svi``: a Pyro BNN (:class:`DenoiserBNN`, a ``PyroModule`` with ``PyroSample`` priors
  ``N(0, prior_scale^2)`` on every weight) fitted by the shared :class:`~petuq_sirf.inference.svi.SVIFitter`
  with a mean-field ``AutoNormal`` guide object, ``Trace_ELBO`` scaled to the data-set size, minibatches; the
  guide starts at a trained point estimate. Predictions run ``pyro.infer.Predictive`` on weight draws.
- ``ais``: PMCnet adaptive importance sampling (:mod:`petuq_sirf.inference.ais`, light diagonal version,
  minibatch gradients) of the 1x1 output head around a trained point estimate, the body fixed.

``predict`` returns :class:`PosteriorSamples`: per posterior sample ``s`` a mean image and an aleatoric
variance, in the units of the input (each image is normalised by its mean internally).

Seeds: ``DenoiserConfig.seed`` (initialisation, training) and ``predict(seed=...)``; torch's global RNG
(weight initialisation, dropout masks, Pyro's samplers) is used only on a seeded fork
(:func:`~petuq_sirf.inference.rng.seeded`), so the caller's RNG state is unchanged by constructing, fitting
or predicting, and Pyro's global param store is never touched.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Predictive
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule
from tqdm.auto import tqdm

from petuq_sirf.bayes.networks import HeteroscedasticCNN, NetworkConfig
from petuq_sirf.bayes.resume import EpochCheckpoint, tensor_digest
from petuq_sirf.bayes.training_data import DenoisingDataset, slice_mean_scale
from petuq_sirf.inference.ais import PMCConfig, pmc_sample
from petuq_sirf.inference.predictive import PosteriorSamples
from petuq_sirf.inference.rng import seeded
from petuq_sirf.inference.svi import SVIFitter, bayesianize, guide_posterior, make_guide
from petuq_sirf.networks.blocks import heteroscedastic_nll_loss

METHODS = ("cnn", "mc_dropout", "ensemble", "svi", "ais")


@dataclass(frozen=True)
class DenoiserConfig:
    """Everything needed to rebuild and train a denoiser (saved as JSON with the checkpoint).

    Attributes:
        method: one of :data:`METHODS`.
        network: architecture (``dropout`` is set from ``dropout`` below for ``mc_dropout``).
        epochs, batch_size, lr: point-estimate training (Adam, heteroscedastic Gaussian NLL).
        dropout: dropout rate of ``mc_dropout``.
        ensemble_size: members of ``ensemble``.
        prior_scale: std of the Normal prior on each weight (``svi``, ``ais``).
        svi_steps, svi_lr, svi_init_scale: SVI steps, learning rate, initial guide std.
        ais_proposals, ais_samples, ais_iterations: PMC ``N, K, T``.
        ais_images: training images in the AIS target (its likelihood is scaled to the full set).
        ais_batch: minibatch for the mean-adaptation gradient (light version).
        ais_particles: particles resampled by weight for prediction.
        ais_beta: covariance adaptation rate (PMCnet uses 0.5; with few effective samples per proposal
            0.5 shrinks the proposals too fast, 0.1 keeps the ESS about 10x higher here).
        seed: seed of initialisation, minibatches and sampling.
    """

    method: str = "svi"
    network: NetworkConfig = field(default_factory=NetworkConfig)
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    dropout: float = 0.1
    ensemble_size: int = 4
    prior_scale: float = 1.0
    svi_steps: int = 300
    svi_lr: float = 1e-3
    svi_init_scale: float = 1e-3
    ais_proposals: int = 10
    ais_samples: int = 20
    ais_iterations: int = 8
    ais_images: int = 24
    ais_batch: int = 24
    ais_particles: int = 100
    ais_beta: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown denoiser method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(f"invalid training: epochs {self.epochs}, batch_size {self.batch_size}")
        if not 1 <= self.ensemble_size <= 256:
            raise ValueError(f"ensemble_size must be in [1, 256], got {self.ensemble_size}")
        if self.network.dose_input and self.method == "ais":
            raise ValueError("dose-conditioned networks (dose_input) are not supported by the ais method yet")

    def net_config(self) -> NetworkConfig:
        drop = self.dropout if self.method == "mc_dropout" else 0.0
        return NetworkConfig(**{**asdict(self.network), "dropout": drop})

    def to_dict(self) -> dict:
        return {**asdict(self), "network": self.network.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> DenoiserConfig:
        d = dict(d)
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown denoiser config keys: {sorted(unknown)}")
        d["network"] = NetworkConfig.from_dict(d.get("network", NetworkConfig().to_dict()))
        return cls(**d)


def _as_batch(noisy: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(y, x)``, ``(N, y, x)`` or ``(z, y, x)`` images -> ``(B, y, x)`` float32 and the original shape."""
    noisy = torch.as_tensor(noisy).float()
    if noisy.dim() == 2:
        return noisy[None], tuple(noisy.shape)
    if noisy.dim() == 3:
        return noisy, tuple(noisy.shape)
    raise ValueError(f"expected a 2D image or a stack of 2D slices (N, y, x), got shape {tuple(noisy.shape)}")


def _minibatches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield perm[i : i + batch_size]


def _normalised(data: DenoisingDataset) -> tuple[torch.Tensor, torch.Tensor]:
    s = slice_mean_scale(data.noisy)
    return data.noisy / s, data.target / s


def train_point_network(
    net: HeteroscedasticCNN,
    data: DenoisingDataset,
    config: DenoiserConfig,
    seed: int,
    progress: bool = False,
    checkpoint: EpochCheckpoint | None = None,
) -> list[float]:
    """Adam: the mean by MSE, the log-variance by the Gaussian NLL around the detached mean (the MSE-only
    warm-up lasts the first third of the epochs). Returns the loss per epoch.

    ``checkpoint``: the state is saved atomically after every epoch, and a run finding a checkpoint of the
    same settings and data resumes after its last epoch, reaching the weights of an uninterrupted run.
    ``seed``: minibatch order and dropout masks (drawn on a seeded fork of the global RNG).
    """
    if len(data) == 0:
        raise ValueError("empty training set")
    with seeded(seed):
        return _train_point_network(net, data, config, seed, progress, checkpoint)


def _train_point_network(
    net: HeteroscedasticCNN,
    data: DenoisingDataset,
    config: DenoiserConfig,
    seed: int,
    progress: bool,
    checkpoint: EpochCheckpoint | None,
) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    x, t = _normalised(data)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    steps_per_epoch = max(1, len(data) // config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, config.epochs * steps_per_epoch))
    history: list[float] = []
    start = 0
    fingerprint = {"config": config.to_dict(), "seed": seed, "data": tensor_digest(x, t)} if checkpoint else {}
    state = checkpoint.load(fingerprint) if checkpoint else None
    if state is not None:
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, start = list(state["history"]), int(state["epoch"])
    # one permutation per epoch: a fresh iterator after restoring the generator continues the same sequence
    batches = _minibatches(len(data), min(config.batch_size, len(data)), gen)
    net.train()
    warmup = config.epochs // 3
    bar = tqdm(
        range(start, config.epochs),
        desc=f"training ({config.method})",
        initial=start,
        total=config.epochs,
        disable=not progress or None,
    )
    for epoch in bar:
        total = 0.0
        for _ in range(steps_per_epoch):
            idx = next(batches)
            mean, log_var = net(x[idx], data.dose[idx])  # the dose is ignored unless dose_input
            mse = ((mean - t[idx]) ** 2).mean()
            if epoch < warmup:
                loss = mse
            else:  # mean by MSE, variance by the NLL around the detached mean (stable; same optimum)
                loss = mse + heteroscedastic_nll_loss(mean.detach(), log_var, t[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            sched.step()
            total += float(loss.detach())
        history.append(total / steps_per_epoch)
        if checkpoint is not None:
            checkpoint.save(
                fingerprint,
                {
                    "epoch": epoch + 1,
                    "history": history,
                    "net": net.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                },
            )
        if progress:
            bar.set_postfix(loss=f"{history[-1]:.4g}")
    net.eval()
    return history


class Denoiser:
    """Base class: training, prediction and the tensors a checkpoint stores."""

    def __init__(self, config: DenoiserConfig) -> None:
        self.config = config
        self.info: dict = {}
        self.checkpoint_dir: Path | None = None

    def _checkpoint(self, name: str) -> EpochCheckpoint | None:
        return EpochCheckpoint(self.checkpoint_dir / f"{name}.pt") if self.checkpoint_dir is not None else None

    # -- to implement -----------------------------------------------------------------------
    def _fit(self, data: DenoisingDataset, progress: bool) -> None:
        raise NotImplementedError

    def _sample_outputs(
        self, x: torch.Tensor, num_samples: int, gen: torch.Generator, dose: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``num_samples`` pairs (mean, log_var) on normalised images ``x (B, y, x)`` (``dose (B,)``)."""
        raise NotImplementedError

    def state_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    # -- public -----------------------------------------------------------------------------
    def fit(self, data: DenoisingDataset, progress: bool = False, checkpoint_dir: str | Path | None = None) -> dict:
        """Train on ``data``; returns ``info`` (training time in s and method-specific diagnostics).

        ``checkpoint_dir``: point-network training saves an atomic checkpoint there after every epoch and
        resumes from it when re-run with the same settings and data (see :mod:`petuq_sirf.bayes.resume`).
        """
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        start = time.perf_counter()
        with seeded(self.config.seed):
            self._fit(data, progress)
        self.info["train_time_s"] = time.perf_counter() - start
        self.info["num_training_images"] = len(data)
        return self.info

    def predict(
        self, noisy: torch.Tensor, num_samples: int = 32, seed: int = 0, dose: torch.Tensor | float | None = None
    ) -> PosteriorSamples:
        """Posterior samples for images ``(y, x)`` or ``(N, y, x)`` (3D images: pass the ``z`` slices).

        Returns mean and aleatoric variance per sample, shape ``(S, N, y, x)`` in input units.
        ``dose``: fraction of the training set's standard dose (scalar or ``(N,)``), required by
        dose-conditioned networks (``NetworkConfig(dose_input=True)``), ignored by the others.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        x, shape = _as_batch(noisy)
        if not torch.isfinite(x).all():
            raise ValueError("input image contains NaN or inf")
        s = slice_mean_scale(x)
        gen = torch.Generator().manual_seed(seed)
        means, variances = [], []
        with torch.no_grad(), seeded(seed):
            if self.config.network.dose_input:
                from petuq_sirf.bayes.networks import dose_channel

                dose_channel(dose, x)  # validates: a clear error before any sampling
                dose = torch.as_tensor(dose, dtype=x.dtype).reshape(-1).expand(x.shape[0])
            for mean, log_var in self._sample_outputs(x / s, num_samples, gen, dose):
                means.append(mean * s)
                variances.append(torch.exp(log_var) * s**2)
        mean_t, var_t = torch.stack(means), torch.stack(variances)
        if len(shape) == 2:
            mean_t, var_t = mean_t[:, 0], var_t[:, 0]
        return PosteriorSamples(mean_t, var_t)


class PointDenoiser(Denoiser):
    """``cnn`` and ``mc_dropout``: one network; dropout (if any) stays on when predicting."""

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__(config)
        with seeded(config.seed):
            self.net = HeteroscedasticCNN(config.net_config())

    def _fit(self, data: DenoisingDataset, progress: bool) -> None:
        self.info["loss"] = train_point_network(
            self.net, data, self.config, self.config.seed, progress, self._checkpoint("net")
        )

    def _sample_outputs(self, x, num_samples, gen, dose=None):
        dropout = self.config.method == "mc_dropout"
        self.net.train(dropout)
        count = num_samples if dropout else 1
        try:
            for i in range(count):
                with seeded(int(torch.randint(2**31 - 1, (1,), generator=gen)) + i):  # the dropout masks
                    out = self.net(x, dose)
                yield out
        finally:
            self.net.eval()

    def state_tensors(self):
        return {f"net.{k}": v for k, v in self.net.state_dict().items()}

    def load_state_tensors(self, tensors):
        self.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})


class EnsembleDenoiser(Denoiser):
    """``ensemble``: independently initialised and trained networks; sample ``s`` uses member ``s mod M``."""

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__(config)
        self.members = []
        for m in range(config.ensemble_size):
            with seeded(config.seed + 1000 * m):
                self.members.append(HeteroscedasticCNN(config.net_config()))

    def _fit(self, data, progress):
        self.info["loss"] = [
            train_point_network(
                net, data, self.config, self.config.seed + 1000 * m, progress, self._checkpoint(f"member{m}")
            )[-1]
            for m, net in enumerate(self.members)
        ]

    def _sample_outputs(self, x, num_samples, gen, dose=None):
        outputs = [net(x, dose) for net in self.members[: min(num_samples, len(self.members))]]
        for i in range(num_samples):
            yield outputs[i % len(outputs)]

    def state_tensors(self):
        return {f"member{m}.{k}": v for m, net in enumerate(self.members) for k, v in net.state_dict().items()}

    def load_state_tensors(self, tensors):
        for m, net in enumerate(self.members):
            prefix = f"member{m}."
            net.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})


class DenoiserBNN(PyroModule):
    """Pyro model of the ``svi`` denoiser: a bayesianized :class:`HeteroscedasticCNN` (``PyroSample`` weights,
    site names = parameter names) and the heteroscedastic Gaussian likelihood of the normalised targets.

    ``forward(x, dose, target=None, idx=None)``: images ``x (B, y, x)``; the outputs are recorded as the
    deterministic sites ``"mean"`` and ``"log_var"``; with ``target`` the images ``idx`` of a data set of
    ``num_images`` are observed (a subsampled plate, so the ELBO is that of the whole set).
    """

    def __init__(self, net: HeteroscedasticCNN, prior_scale: float, num_images: int = 1) -> None:
        super().__init__()
        # a top-level PyroModule of its own (not a child), so its sites keep the bare parameter names
        self._wrapped = (bayesianize(copy.deepcopy(net), prior_scale),)
        self.num_images = num_images

    @property
    def bnn(self) -> PyroModule:
        """The bayesianized network (sample sites named as the network's parameters)."""
        return self._wrapped[0]

    def forward(
        self,
        x: torch.Tensor,
        dose: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        idx: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.bnn(x, dose)
        pyro.deterministic("mean", mean)
        pyro.deterministic("log_var", log_var)
        if target is not None:
            with pyro.plate("images", self.num_images, subsample=idx):
                pyro.sample("obs", dist.Normal(mean, torch.exp(0.5 * log_var)).to_event(2), obs=target)
        return mean, log_var


class SVIDenoiser(Denoiser):
    """``svi``: Pyro BNN with mean-field Gaussian posterior; prediction samples all weights.

    After :meth:`fit`, ``model`` (:class:`DenoiserBNN`), ``guide`` (the fitted ``AutoNormal``) and
    ``fitter`` (:class:`~petuq_sirf.inference.svi.SVIFitter`, holding the guide's param store) are kept;
    ``loc`` / ``scale`` are the posterior as plain tensors (what a checkpoint stores).
    """

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__(config)
        with seeded(config.seed):
            self.net = HeteroscedasticCNN(config.net_config())
        self.loc = {k: v.detach().clone() for k, v in self.net.named_parameters()}
        self.scale = {k: torch.zeros_like(v) for k, v in self.loc.items()}
        self.model: DenoiserBNN | None = None
        self.guide: AutoNormal | None = None
        self.fitter: SVIFitter | None = None

    def _fit(self, data, progress):
        cfg = self.config
        self.info["pretrain_loss"] = train_point_network(
            self.net, data, cfg, cfg.seed, progress, self._checkpoint("net")
        )
        init = {k: v.detach().clone() for k, v in self.net.named_parameters()}
        n_total = len(data)
        self.model = DenoiserBNN(self.net, cfg.prior_scale, n_total)
        x, t = _normalised(data)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        batches = ((x[i], data.dose[i], t[i], i) for i in _minibatches(n_total, min(cfg.batch_size, n_total), gen))
        self.guide = make_guide(self.model, init, cfg.svi_init_scale)
        # seed None: continue the RNG fork that fit() seeded for the whole training
        self.fitter = SVIFitter(
            self.model, self.guide, lr=cfg.svi_lr, scale_lr=20.0 * cfg.svi_lr, lr_final=cfg.svi_lr / 10, seed=None
        )
        losses = self.fitter.fit(batches, cfg.svi_steps, progress)
        self.loc, self.scale = guide_posterior(self.guide)
        self.info["elbo"] = [-v for v in losses[-10:]]
        self.info["posterior_scale_mean"] = float(torch.cat([v.reshape(-1) for v in self.scale.values()]).mean())

    def _sample_outputs(self, x, num_samples, gen, dose=None):
        draws = [
            {k: self.loc[k] + self.scale[k] * torch.randn(self.loc[k].shape, generator=gen) for k in self.loc}
            for _ in range(num_samples)
        ]
        samples = {k: torch.stack([d[k] for d in draws]) for k in self.loc}
        model = DenoiserBNN(self.net, self.config.prior_scale)
        out = Predictive(model, posterior_samples=samples, return_sites=("mean", "log_var"))(x, dose)
        yield from zip(out["mean"], out["log_var"])

    def state_tensors(self):
        return {**{f"loc.{k}": v for k, v in self.loc.items()}, **{f"scale.{k}": v for k, v in self.scale.items()}}

    def load_state_tensors(self, tensors):
        names = {k for k, _ in self.net.named_parameters()}
        loc = {k[4:]: v for k, v in tensors.items() if k.startswith("loc.")}
        scale = {k[6:]: v for k, v in tensors.items() if k.startswith("scale.")}
        if set(loc) != names or set(scale) != names:
            raise ValueError("checkpoint does not match the SVI network (parameter names differ)")
        self.net.load_state_dict(loc, strict=False)
        self.loc, self.scale = loc, scale


class AISDenoiser(Denoiser):
    """``ais``: PMC samples of the output head (``2 x (width + 1)`` weights) around a trained network."""

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__(config)
        with seeded(config.seed):
            self.net = HeteroscedasticCNN(config.net_config())
        width = config.network.width
        self.particles = torch.cat([self.net.head.weight.detach().reshape(-1), self.net.head.bias.detach()])[None]
        self._width = width

    def _split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``theta (P, 2 (w + 1))`` -> weights ``(P, 2, w)`` and biases ``(P, 2)``."""
        w = self._width
        return theta[:, : 2 * w].reshape(-1, 2, w), theta[:, 2 * w :]

    def _head(self, x: torch.Tensor, feats: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance ``(P, B, y, x)`` for head parameters ``theta (P, d)``."""
        weight, bias = self._split(theta.to(feats.dtype))
        out = torch.einsum("pkc,bcyx->pbkyx", weight, feats) + bias[:, None, :, None, None]
        return self.net.finish(x.to(feats.dtype), out)

    def _fit(self, data, progress):
        cfg = self.config
        self.info["pretrain_loss"] = train_point_network(
            self.net, data, cfg, cfg.seed, progress, self._checkpoint("net")
        )
        gen = torch.Generator().manual_seed(cfg.seed + 2)
        n_total = len(data)
        pick = torch.randperm(n_total, generator=gen)[: min(cfg.ais_images, n_total)]
        x, t = _normalised(data.subset(pick))
        with torch.no_grad():  # float64: the log-likelihood sums ~1e5 voxels and PMC needs O(1) differences
            feats = self.net.features(x).double()
        x, t = x.double(), t.double()
        scale_all = n_total / len(pick)
        prior_var = cfg.prior_scale**2

        def log_lik(theta: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
            xs, fs, ts = (x, feats, t) if idx is None else (x[idx], feats[idx], t[idx])
            mean, log_var = self._head(xs, fs, theta)
            ll = -0.5 * (log_var + (ts - mean) ** 2 * torch.exp(-log_var) + math.log(2 * math.pi))
            return ll.sum(dim=(1, 2, 3)).double()

        def log_target(theta: torch.Tensor, grad: bool = False) -> torch.Tensor:
            out = []
            with torch.set_grad_enabled(grad):
                for chunk in theta.split(25):
                    prior = -0.5 * (chunk**2).sum(-1) / prior_var
                    out.append(scale_all * log_lik(chunk) + prior)
            return torch.cat(out)

        def make_loss():
            idx = torch.randperm(len(pick), generator=gen)[: min(cfg.ais_batch, len(pick))]
            factor = n_total / len(idx)
            return lambda th: -(factor * log_lik(th[None], idx)[0] - 0.5 * (th**2).sum() / prior_var)

        theta0 = torch.cat([self.net.head.weight.detach().reshape(-1), self.net.head.bias.detach()]).double()
        # The trained head is not exactly at the mode of this (very concentrated) posterior: refine it first.
        theta0 = self._refine_mode(x, feats, theta0, log_target, scale_all, prior_var)
        self.net.head.weight.data.copy_(self._split(theta0[None])[0][0].reshape_as(self.net.head.weight))
        self.net.head.bias.data.copy_(theta0[2 * self._width :])
        # Whitening by the Laplace (Gauss-Newton) covariance of the head: theta = theta0 + chol z (chol maps
        # the active parameters only). PMC samples z with diagonal proposals (light version) from N(0, I).
        chol = self._laplace_factor(x, feats, theta0, scale_all, prior_var)

        def log_target_z(z: torch.Tensor) -> torch.Tensor:
            return log_target(theta0 + z @ chol.T)

        def make_loss_z():
            loss = make_loss()
            return lambda z: loss(theta0 + chol @ z)

        pmc = PMCConfig(
            num_proposals=cfg.ais_proposals,
            samples_per_proposal=cfg.ais_samples,
            iterations=cfg.ais_iterations,
            sigma_prop=1.0,
            init_spread=0.1,
            beta=cfg.ais_beta,
            diagonal=True,
            burn_in=0,  # the first proposals are the Laplace approximation: keep their samples
            seed=cfg.seed,
        )
        result = pmc_sample(
            log_target_z, torch.zeros(chol.shape[1], dtype=torch.float64), pmc, make_loss=make_loss_z, progress=progress
        )
        z_particles = result.resample(cfg.ais_particles, gen)
        self.particles = (theta0 + z_particles @ chol.T).float()
        laplace_std = torch.sqrt(torch.diagonal(chol @ chol.T))
        post_std = torch.sqrt(torch.diagonal(chol @ torch.diag(result.var) @ chol.T))
        self.info.update(
            ess=result.ess,
            ess_per_iteration=result.ess_per_iteration,
            num_weighted_samples=int(result.samples.shape[0]),
            log_evidence=result.log_evidence,
            laplace_std_mean=float(laplace_std.mean()),
            posterior_std_mean=float(post_std.mean()),
        )

    def _refine_mode(
        self, x, feats, theta: torch.Tensor, log_target, scale: float, prior_var: float, iterations: int = 15
    ) -> torch.Tensor:
        """Fisher scoring on ``log_target`` from ``theta`` (Gauss-Newton steps with step halving)."""
        value = float(log_target(theta[None])[0])
        for _ in range(iterations):
            th = theta.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(log_target(th[None], grad=True)[0], th)
            active = self._active(feats)
            precision = self._precision(x, feats, theta, scale, prior_var)[active][:, active]
            step = torch.zeros_like(theta)
            step[active] = torch.linalg.solve(precision, grad.double()[active])
            gamma, improved = 1.0, False
            for _ in range(10):
                cand = theta + gamma * step
                new = float(log_target(cand[None])[0])
                if new > value:
                    theta, improved = cand, value + 1e-3 < new
                    value = new
                    break
                gamma /= 2
            if not improved:
                break
        return theta

    def _precision(
        self, x: torch.Tensor, feats: torch.Tensor, theta0: torch.Tensor, scale: float, prior_var: float
    ) -> torch.Tensor:
        """Laplace precision ``scale F + I / prior_var``, ``F`` the Fisher (Gauss-Newton) matrix of the head.

        The head is linear in its inputs ``phi = [features, 1]``: ``d mean / d w0 = phi`` and
        ``d log_var / d w1 = sigmoid(a1 - min_log_var) phi``; the Gaussian Fisher is block diagonal with
        ``sum phi phi^T / var`` and ``0.5 sum (sigmoid' phi)(sigmoid' phi)^T`` (``scale`` x the image sum).
        """
        w = self._width
        with torch.no_grad():
            weight, bias = self._split(theta0[None].to(feats.dtype))
            pre = torch.einsum("kc,bcyx->bkyx", weight[0], feats) + bias[0][None, :, None, None]
            _, log_var = self.net.finish(x, pre)
            phi = torch.cat([feats, torch.ones_like(feats[:, :1])], 1).double()  # (B, w + 1, y, x)
            inv_var = torch.exp(-log_var).double()
            dlv = torch.sigmoid(pre[:, 1] - self.net.config.min_log_var).double()
            f_mean = torch.einsum("bcyx,bdyx->cd", phi * inv_var[:, None], phi)
            f_var = 0.5 * torch.einsum("bcyx,bdyx->cd", phi * dlv[:, None] ** 2, phi)
        # parameter order: weights of output 0, weights of output 1, bias 0, bias 1
        order = list(range(w)) + [2 * w]
        order_v = list(range(w, 2 * w)) + [2 * w + 1]
        fisher = torch.zeros((2 * w + 2, 2 * w + 2), dtype=torch.float64)
        fisher[torch.tensor(order)[:, None], torch.tensor(order)[None]] = f_mean
        fisher[torch.tensor(order_v)[:, None], torch.tensor(order_v)[None]] = f_var
        return scale * fisher + torch.eye(2 * w + 2, dtype=torch.float64) / prior_var

    def _active(self, feats: torch.Tensor) -> torch.Tensor:
        """Head parameters the data identify: weights of channels that are zero on every cached image
        (dead ReLUs) are kept fixed (their posterior is the prior, and sampling them is pointless)."""
        live = feats.abs().amax(dim=(0, 2, 3)) > 0
        return torch.cat([live, live, torch.ones(2, dtype=torch.bool)])

    def _laplace_factor(self, x, feats, theta0, scale, prior_var) -> torch.Tensor:
        """``B (d, d_active)`` with ``B B^T`` the Laplace covariance restricted to the active parameters."""
        active = self._active(feats)
        precision = self._precision(x, feats, theta0, scale, prior_var)[active][:, active]
        cov = torch.cholesky_inverse(torch.linalg.cholesky(precision))
        factor = torch.zeros((theta0.numel(), int(active.sum())), dtype=torch.float64)
        factor[active] = torch.linalg.cholesky(0.5 * (cov + cov.T))
        return factor

    def _sample_outputs(self, x, num_samples, gen, dose=None):
        feats = self.net.features(x)
        order = torch.randperm(self.particles.shape[0], generator=gen)
        for i in range(num_samples):
            theta = self.particles[order[i % len(order)]][None]
            mean, log_var = self._head(x, feats, theta)
            yield mean[0], log_var[0]

    def state_tensors(self):
        return {**{f"net.{k}": v for k, v in self.net.state_dict().items()}, "particles": self.particles}

    def load_state_tensors(self, tensors):
        self.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        if "particles" not in tensors:
            raise ValueError("checkpoint has no AIS particles")
        self.particles = tensors["particles"]


def make_denoiser(config: DenoiserConfig) -> Denoiser:
    """The denoiser class for ``config.method``."""
    if config.method in ("cnn", "mc_dropout"):
        return PointDenoiser(config)
    if config.method == "ensemble":
        return EnsembleDenoiser(config)
    if config.method == "svi":
        return SVIDenoiser(config)
    return AISDenoiser(config)
