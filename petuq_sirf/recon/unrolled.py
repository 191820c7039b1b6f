"""Deep unrolled reconstruction (FBSEM-like) with Bayesian CNN blocks and an aleatoric head.

Each of the ``K`` unrolled iterations fuses an EM step with a CNN regulariser step, as in
forward-backward splitting EM (Mehranian & Reader 2020)::

    x_em = x / s * A^T(y / ybar(x))                      (EM step through our projector)
    r    = c * (x/c - R(x/c))                            (residual CNN regulariser, shared weights)
    x    = argmin_{x>0} s (x - x_em log x) + beta_k s_mean / (2 c) (x - r)^2     (closed form)

with ``c`` the mean of the initial image (so the CNN sees images of mean about 1 at any count
level) and learned per-iteration strengths ``beta_k = exp(log_beta_k)``. An aleatoric head maps
``(x_K / c, x_0 / c)`` to a per-voxel log-variance (normalised units). Training is end-to-end
through ``model.forward`` / ``model.adjoint``: (1) Adam on the mean (MSE), (2) the head alone by
Gaussian NLL, (3) SVI with a mean-field Normal posterior over the regulariser weights
(:mod:`petuq_sirf.inference.weight_posterior`) under the heteroscedastic Gaussian likelihood.

Prediction draws weight samples (epistemic), runs the network on them through ``pyro.infer.Predictive``
(:func:`~petuq_sirf.inference.weight_posterior.predictive_outputs`) and adds the aleatoric noise: per sample
``x_s = mean_s + c exp(lv_s / 2) eps``; the summary has mean, total std and its two parts. Training and
prediction take seeds and leave torch's global RNG and Pyro's param store as they were.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from petuq_sirf.inference.network_limits import (
    MAX_CHANNELS,
    MAX_LAYERS,
    MAX_UNROLLED_ITERATIONS,
    check_parameter_count,
    check_range,
    conv_stack_parameters,
)
from petuq_sirf.inference.rng import seeded
from petuq_sirf.inference.weight_posterior import (
    ParticlePosterior,
    PosteriorImage,
    SVIConfig,
    WeightPosterior,
    fit_weight_posterior,
    predictive_outputs,
)
from petuq_sirf.networks.blocks import conv_stack, heteroscedastic_nll_loss
from petuq_sirf.operators.acquisition import AcquisitionModel
from petuq_sirf.recon.discrepancy import refine_posterior_mean
from petuq_sirf.recon.em import em_update
from petuq_sirf.recon.lowdose import LowDoseSet
from petuq_sirf.recon.pnp_admm import em_quadratic_fusion, volume_mean_scale

_TINY = 1e-12


@dataclass(frozen=True)
class UnrolledConfig:
    """Architecture: ``num_iterations`` unrolled steps and the regulariser of each step.

    ``regulariser``: ``"cnn"`` (residual CNN, ``depth`` x 3x3 convolutions ``channels`` wide: FBSEM) or
    ``"dbfb"`` (the unfolded dual block-coordinate forward-backward prox of
    :class:`~petuq_sirf.networks.dual_fb.UnfoldedDualFBProx`, ``dbfb_layers`` dual iterations over
    ``dbfb_filters`` filters in ``dbfb_blocks`` blocks). ``dose_input``: the regulariser, the fusion
    strengths and the variance head also see the count level (see :meth:`UnrolledFBSEM.noise_level`),
    for networks trained over a range of doses. The aleatoric log-variance (normalised units) is kept in
    ``(min_log_var, max_log_var)`` by smooth bounds; the upper one (std at most 10x the mean level) stops the
    head from extrapolating to absurd values on inputs far outside its training range (a hot lesion in an
    otherwise cold image gave std 6.5e4 with the ellipse-trained head).
    """

    num_iterations: int = 6
    channels: int = 16
    depth: int = 4
    init_log_beta: float = -1.0
    min_log_var: float = -12.0
    max_log_var: float = 4.6
    dose_input: bool = False
    regulariser: str = "cnn"
    dbfb_layers: int = 6
    dbfb_filters: int = 16
    dbfb_blocks: int = 2

    def __post_init__(self) -> None:
        if self.num_iterations < 1 or self.channels < 1 or self.depth < 2:
            raise ValueError(f"invalid unrolled network {self}")
        if self.regulariser not in ("cnn", "dbfb"):
            raise ValueError(f"unknown unrolled regulariser {self.regulariser!r}: choose cnn or dbfb")
        check_range("unrolled iterations", self.num_iterations, 1, MAX_UNROLLED_ITERATIONS)
        check_range("unrolled CNN channels", self.channels, 1, MAX_CHANNELS)
        check_range("unrolled CNN depth", self.depth, 2, MAX_LAYERS)
        check_range("DBFB layers", self.dbfb_layers, 1, MAX_LAYERS)
        check_range("DBFB filters", self.dbfb_filters, 1, MAX_CHANNELS)
        extra = 1 if self.dose_input else 0
        if self.regulariser == "cnn":
            regulariser = conv_stack_parameters(1 + extra, self.channels, self.depth, 1)
        else:
            regulariser = self.dbfb_filters * 9 + 3 * self.dbfb_layers * self.dbfb_blocks
        head = conv_stack_parameters(2 + extra, self.channels, 3, 1)
        check_parameter_count("the unrolled network", regulariser + head + (1 + extra) * self.num_iterations)

    def to_dict(self) -> dict:
        return asdict(self)


# count level of the dose input: log(expected counts per voxel at the mean activity), centred and scaled
LOG_COUNTS_CENTRE = 3.0
LOG_COUNTS_SCALE = 2.0


class UnrolledFBSEM(nn.Module):
    """``forward(model, y, x0) -> (mean, log_var)``; images ``(..., z, y, x)``, ``log_var`` normalised units.

    ``model`` implements forward/adjoint/sensitivity (an acquisition model or a
    :class:`~petuq_sirf.recon.lowdose.BatchedAcquisition`), ``y`` the prompts, ``x0`` the initial
    image (e.g. a few MLEM iterations). With ``config.dose_input`` the per-iteration fusion strength is
    ``beta_k = exp(log_beta_k + beta_slope_k * mean(n))`` and the regulariser and the head get the noise-level
    map ``n`` as an extra channel (:meth:`noise_level`).
    """

    def __init__(self, config: UnrolledConfig | None = None) -> None:
        super().__init__()
        self.config = config or UnrolledConfig()
        c = self.config
        extra = 1 if c.dose_input else 0
        if c.regulariser == "cnn":  # SiLU: smooth, for finite-difference checks
            self.regulariser = conv_stack(1 + extra, c.channels, 1, c.depth, nn.SiLU, last_weight_scale=0.1)
        else:
            from petuq_sirf.networks.dual_fb import UnfoldedDualFBProx

            self.regulariser = UnfoldedDualFBProx(c.dbfb_layers, c.dbfb_filters, c.dbfb_blocks)
        self.log_beta = nn.Parameter(torch.full((c.num_iterations,), c.init_log_beta))
        if c.dose_input:
            self.beta_slope = nn.Parameter(torch.full((c.num_iterations,), -0.5))
        self.head = conv_stack(2 + extra, c.channels, 1, 3, nn.SiLU, last_weight_scale=0.1)

    def with_iterations(self, num_iterations: int) -> UnrolledFBSEM:
        """A copy unrolled for ``num_iterations >= config.num_iterations`` steps (a warm start for training).

        The regulariser and the head are shared by all iterations and are copied; each added iteration starts
        with the last iteration's fusion strength (``log_beta``, ``beta_slope``), so the added steps continue
        the last one's balance of data and prior.
        """
        have = self.config.num_iterations
        if num_iterations < have:
            raise ValueError(f"cannot unroll fewer iterations ({num_iterations}) than the network has ({have})")
        out = UnrolledFBSEM(replace(self.config, num_iterations=num_iterations)).to(self.log_beta.device)
        state = self.state_dict()
        for name in ("log_beta", "beta_slope"):
            if name in state:
                v = state[name]
                state[name] = torch.cat([v, v[-1:].expand(num_iterations - have)])
        out.load_state_dict(state)
        return out

    def _slices(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, 1, *x.shape[-2:])

    @staticmethod
    def noise_level(sens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Noise-level map ``n = (log(c * sens) - 3) / 2``, ``sens`` the sensitivity (counts per unit activity).

        ``c * sens`` is the expected number of counts a voxel at the image's mean activity ``c`` contributes:
        it grows with the dose (and with the scanner's sensitivity), so ``n`` tells the network the count
        level; voxels the scanner does not see get the value of one count in a thousand.
        """
        return (torch.log((c * sens).clamp_min(1e-3)) - LOG_COUNTS_CENTRE) / LOG_COUNTS_SCALE

    def _regularise(self, xn: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """The regulariser's target image (normalised units) for the normalised image ``xn``."""
        s = self._slices(xn)
        n = None if noise is None else self._slices(noise.expand_as(xn))
        if self.config.regulariser == "dbfb":
            return self.regulariser(s, n).reshape(xn.shape)
        inp = s if n is None else torch.cat([s, n], dim=1)
        return xn - self.regulariser(inp).reshape(xn.shape)

    def forward(self, model, y: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sens = model.sensitivity()
        c = volume_mean_scale(x0)
        s_mean = sens.mean(dim=(-3, -2, -1), keepdim=True)
        seen = sens > 0  # voxels outside the field of view take the regulariser's value
        inv = torch.where(seen, s_mean / (c * sens.clamp_min(_TINY)), torch.zeros_like(sens))
        noise = self.noise_level(sens, c) if self.config.dose_input else None
        if noise is not None:
            seen_f = seen.to(noise.dtype)
            level = (noise * seen_f).sum(dim=(-3, -2, -1), keepdim=True) / seen_f.sum(
                dim=(-3, -2, -1), keepdim=True
            ).clamp_min(1)
        x = x0
        for k in range(self.config.num_iterations):
            x_em = em_update(model, y, x, sens)
            r = c * self._regularise(x / c, noise)
            log_beta = self.log_beta[k] if noise is None else self.log_beta[k] + self.beta_slope[k] * level
            x = torch.where(seen, em_quadratic_fusion(x_em, r, torch.exp(log_beta) * inv), r.clamp_min(0))
        feats = [self._slices(x / c), self._slices(x0 / c)]
        if noise is not None:
            feats.append(self._slices(noise.expand_as(x)))
        raw = self.head(torch.cat(feats, dim=1)).reshape(x.shape)
        lo = self.config.min_log_var
        log_var = lo + F.softplus(raw - 4.0 - lo)  # starts near exp(-4): std 0.14 of the mean level
        hi = self.config.max_log_var  # smooth cap: std <= 10 x the mean level (no blow-up off the training range)
        log_var = hi - F.softplus(hi - log_var)
        return x, log_var


def bayesian_parameter_names(net: UnrolledFBSEM) -> list[str]:
    """The parameters given a posterior: the regulariser CNN's weights and biases (DBFB: its filters)."""
    if net.config.regulariser == "dbfb":
        return ["regulariser.filters"]
    return [n for n, _ in net.named_parameters() if n.startswith("regulariser.")]


# -------------------------------------------------------------------------------------------- training
@dataclass
class UnrolledTrainingConfig:
    """Three-stage training (see the module docstring); ``svi_steps`` 0 skips the posterior.

    ``relative_loss``: the mean-image loss of each item is its MSE divided by the MSE of its initial
    image (so items at every count level weigh alike; for training over a range of doses).
    ``svi_learn_loc``: the weight posterior's locations are learned too (True) or kept at the trained weights,
    only the scales learned (False: the posterior mean network stays the trained one).
    """

    num_steps: int = 300
    head_steps: int = 100
    svi_steps: int = 100
    batch_size: int = 4
    lr: float = 2e-3
    svi_lr: float = 1e-3
    prior_scale: float = 1.0
    seed: int = 0
    relative_loss: bool = False
    svi_learn_loc: bool = True

    def __post_init__(self) -> None:
        if self.num_steps < 0 or self.head_steps < 0 or self.svi_steps < 0 or self.batch_size < 1:
            raise ValueError("step counts must be >= 0 and batch_size >= 1")


@dataclass
class UnrolledTrainingResult:
    net: UnrolledFBSEM
    posterior: WeightPosterior | None
    losses: list[float] = field(default_factory=list)
    head_losses: list[float] = field(default_factory=list)
    svi_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)


def _batches(data: LowDoseSet, geometric: AcquisitionModel, size: int, gen: torch.Generator):
    dev = geometric.device
    while True:
        idx = torch.randperm(len(data), generator=gen)[: min(size, len(data))]
        b = data.select(idx)
        yield b.model(geometric), b.prompts.to(dev), b.init.to(dev), b.truth.to(dev)


def _normalised_mse(mean: torch.Tensor, truth: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    c = volume_mean_scale(x0)
    return F.mse_loss(mean / c, truth / c)


def _relative_mse(mean: torch.Tensor, truth: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Mean over items of MSE(mean, truth) / MSE(x0, truth)."""
    dims = (-3, -2, -1)
    ref = ((x0 - truth) ** 2).mean(dim=dims).clamp_min(_TINY)
    return (((mean - truth) ** 2).mean(dim=dims) / ref).mean()


def validation_loss(net: UnrolledFBSEM, data: LowDoseSet, geometric: AcquisitionModel) -> float:
    """Mean squared error of the mean image in normalised units (divided by the initial image mean)."""
    dev = geometric.device
    with torch.no_grad():
        mean, _ = net(data.model(geometric), data.prompts.to(dev), data.init.to(dev))
        return float(_normalised_mse(mean, data.truth.to(dev), data.init.to(dev)))


def train_unrolled(
    data: LowDoseSet,
    geometric: AcquisitionModel,
    config: UnrolledTrainingConfig | None = None,
    net_config: UnrolledConfig | None = None,
    validation: LowDoseSet | None = None,
    net: UnrolledFBSEM | None = None,
    progress: bool = False,
) -> UnrolledTrainingResult:
    """Train end to end on ``data`` (from :func:`~petuq_sirf.recon.lowdose.make_low_dose_set`).

    ``validation``: the validation loss is recorded before training and after each stage.
    ``net``: continue training an existing network. ``progress``: bars over the steps (on a terminal).
    ``config.seed`` seeds the initialisation (on a fork of torch's global RNG, left unchanged), the
    minibatches and the SVI stage.
    """
    cfg = config or UnrolledTrainingConfig()
    with seeded(cfg.seed):
        return _train_unrolled(data, geometric, cfg, net_config, validation, net, progress)


def _train_unrolled(
    data: LowDoseSet,
    geometric: AcquisitionModel,
    cfg: UnrolledTrainingConfig,
    net_config: UnrolledConfig | None,
    validation: LowDoseSet | None,
    net: UnrolledFBSEM | None,
    progress: bool,
) -> UnrolledTrainingResult:
    gen = torch.Generator().manual_seed(cfg.seed)
    net = (net or UnrolledFBSEM(net_config)).to(geometric.device)
    result = UnrolledTrainingResult(net, None)
    if validation is not None:
        result.val_losses.append(validation_loss(net, validation, geometric))
    batches = _batches(data, geometric, cfg.batch_size, gen)
    mean_params = [p for n, p in net.named_parameters() if not n.startswith("head.")]
    if cfg.num_steps:
        opt = torch.optim.Adam(mean_params, lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.num_steps)
        for _ in tqdm(range(cfg.num_steps), desc="unrolled training (mean, MSE)", disable=not progress or None):
            model, y, x0, truth = next(batches)
            mean, _ = net(model, y, x0)
            loss = (_relative_mse if cfg.relative_loss else _normalised_mse)(mean, truth, x0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            result.losses.append(float(loss.detach()))
        if validation is not None:
            result.val_losses.append(validation_loss(net, validation, geometric))
    if cfg.head_steps:
        opt = torch.optim.Adam(net.head.parameters(), lr=cfg.lr)
        frozen = [p for p in mean_params if p.requires_grad]
        for p in frozen:  # the head's gradients only: autograd does not trace the unrolled iterations
            p.requires_grad_(False)
        try:
            for _ in tqdm(
                range(cfg.head_steps), desc="unrolled training (variance head)", disable=not progress or None
            ):
                model, y, x0, truth = next(batches)
                mean, log_var = net(model, y, x0)
                c = volume_mean_scale(x0)
                loss = heteroscedastic_nll_loss(mean.detach() / c, log_var, truth / c)
                opt.zero_grad()
                loss.backward()
                opt.step()
                result.head_losses.append(float(loss.detach()))
        finally:
            for p in frozen:
                p.requires_grad_(True)
    if cfg.svi_steps:
        n_data = len(data)

        def likelihood(call, model, y, x0, truth):
            mean, log_var = call(model, y, x0)
            c = volume_mean_scale(x0)
            with pyro.poutine.scale(scale=n_data / y.shape[0]):
                pyro.sample(
                    "obs",
                    dist.Normal(mean / c, torch.exp(0.5 * log_var)).to_event(mean.dim()),
                    obs=truth / c,
                )

        svi_cfg = SVIConfig(
            num_steps=cfg.svi_steps,
            lr=cfg.svi_lr,
            prior_scale=cfg.prior_scale,
            seed=cfg.seed,
            learn_loc=cfg.svi_learn_loc,
        )
        result.posterior, result.svi_losses = fit_weight_posterior(
            net, bayesian_parameter_names(net), likelihood, batches, svi_cfg, progress=progress
        )
    net.eval()
    return result


# ------------------------------------------------------------------------------------------ prediction
def predict_unrolled(
    net: UnrolledFBSEM,
    model,
    y: torch.Tensor,
    x0: torch.Tensor,
    posterior: WeightPosterior | ParticlePosterior | None = None,
    num_samples: int = 16,
    aleatoric: bool = True,
    seed: int = 0,
) -> PosteriorImage:
    """Posterior predictive of the unrolled network (point weights when ``posterior`` is None).

    ``posterior``: a mean-field SVI posterior or AIS weight draws (:class:`ParticlePosterior`); its
    ``num_samples`` weight draws (from a generator seeded with ``seed``) go through ``pyro.infer.Predictive``.
    Returns the summary over ``num_samples`` samples ``(S, ..., z, y, x)`` (a point network repeats its mean).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        c = volume_mean_scale(x0)
        if posterior is not None:
            per_draw = [posterior.sample(gen) for _ in range(num_samples)]
            draws = {k: torch.stack([d[k] for d in per_draw]) for k in per_draw[0]}
            means_t, log_var = predictive_outputs(net, draws, model, y, x0)
        else:
            mean, lv = net(model, y, x0)
            means_t, log_var = mean.expand(num_samples, *mean.shape).clone(), lv.expand(num_samples, *lv.shape).clone()
        var_a = torch.exp(log_var) * c**2 if aleatoric else torch.zeros_like(means_t)
        noise = torch.randn(means_t.shape, generator=gen).to(means_t) * var_a.sqrt()
        samples = (means_t + noise).clamp_min(0) if aleatoric else means_t
        epi = means_t.std(0, unbiased=True) if num_samples > 1 else torch.zeros_like(means_t[0])
        ale = var_a.mean(0).sqrt()
        return PosteriorImage(means_t.mean(0), torch.sqrt(epi**2 + ale**2), epi, ale, samples)


# ----------------------------------------------------------------------------------- conformal recalibration
def calibrate_unrolled(
    net: UnrolledFBSEM,
    data: LowDoseSet,
    geometric: AcquisitionModel,
    posterior: WeightPosterior | ParticlePosterior | None = None,
    num_samples: int = 8,
    levels: tuple[float, ...] | None = None,
    seed: int = 0,
    refine_threshold: float | None = None,
) -> dict[float, float]:
    """Split-conformal std scale factors ``{level: q / z_level}`` from held-out calibration phantoms.

    ``data`` must not have been used for training. Scores ``|truth - mean| / std`` are pooled over
    the body (``regions["background"]`` of each phantom, all voxels if absent) of every phantom, with
    mean and total std from :func:`predict_unrolled` (``num_samples`` draws). The interval
    ``mean -/+ scale z_level std`` then has coverage >= level on exchangeable data. ``refine_threshold``: calibrate
    the mean refined by :func:`~petuq_sirf.recon.discrepancy.refine_to_discrepancy` at this threshold (as
    ``petuq reconstruct --refine-discrepancy`` makes it) instead of the network's own mean.
    """
    from petuq_sirf.uq.calibration import DEFAULT_LEVELS, conformal_quantile, gaussian_quantile

    pred = predict_for_calibration(net, data, geometric, posterior, num_samples, seed, refine_threshold)
    truth = data.truth.to(pred.mean)
    scores = (truth - pred.mean).abs() / pred.std.clamp_min(1e-6 * float(volume_mean_scale(data.init).mean()))
    if data.regions and all("background" in r for r in data.regions):
        mask = torch.stack([torch.as_tensor(r["background"]).bool() for r in data.regions]).to(scores.device)
        scores = scores[mask]
    levels = tuple(levels) if levels else DEFAULT_LEVELS
    return {float(v): conformal_quantile(scores, v) / gaussian_quantile(v) for v in levels}


def predict_for_calibration(
    net: UnrolledFBSEM,
    data: LowDoseSet,
    geometric: AcquisitionModel,
    posterior=None,
    num_samples: int = 8,
    seed: int = 0,
    refine_threshold: float | None = None,
) -> PosteriorImage:
    """:func:`predict_unrolled` on a calibration set (its initial images), the mean refined when ``refine_threshold``
    is not None (:func:`~petuq_sirf.recon.discrepancy.refine_posterior_mean`): the estimator a calibration describes."""
    dev = geometric.device
    model, y = data.model(geometric), data.prompts.to(dev)
    pred = predict_unrolled(net, model, y, data.init.to(dev), posterior, num_samples, seed=seed)
    if refine_threshold is not None:  # as petuq reconstruct makes it, model-error guard included
        pred = refine_posterior_mean(model, y, pred, refine_threshold, check_model_fit=True)[0]
    return pred
