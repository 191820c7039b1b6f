"""Unadjusted Langevin sampling (ULA) with a fixed diagonal preconditioner, reflection at zero,
burn-in, thinning, streaming moments and convergence diagnostics (ESS, split R-hat).

One step for a target density ``pi`` with ``g = grad log pi``::

    x_{k+1} = x_k + delta M g(x_k) + sqrt(2 delta M) xi_k,      xi_k ~ N(0, I)

``M`` is a *constant* positive diagonal preconditioner (any fixed ``M`` leaves the Langevin diffusion's
stationary law ``pi`` unchanged, so no correction term is needed). With ``reflect=True`` every
coordinate is reflected at zero after the step, ``x <- |x|``: the reflected scheme samples ``pi``
restricted to the non-negative orthant (Bubeck, Eldan & Lehec 2018; used with a Poisson likelihood
by Melidonis et al. 2023). ULA is unadjusted: its stationary law differs from ``pi`` by ``O(delta)``,
so ``delta`` must be small against ``1 / L`` (``L`` the Lipschitz constant of ``M^{1/2} g`` in the
preconditioned coordinates); for a Gaussian target with precision ``P`` the stationary covariance is
``P^{-1} (I - delta P / 2)^{-1}``.

Chains run as a batch: ``x0`` has a leading chain axis ``(C, ...)`` and ``g`` must accept it. The
moments are Welford updates in float64 over the kept (post burn-in, thinned) states of all chains;
up to ``max_stored`` kept states per chain are stored for quantiles; diagnostics use traces of a few
scalar functionals (by default the mean over the image and a fixed random set of coordinates).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from petuq_sirf.io.resumable import ResumableCheckpoint

GradFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LangevinConfig:
    """Settings of :func:`langevin_sample`.

    Attributes:
        num_samples: kept states per chain (after burn-in and thinning).
        burn_in: steps discarded at the start of each chain.
        thinning: keep every ``thinning``-th state after the burn-in.
        max_stored: kept states per chain stored for quantiles (evenly decimated; the moments use all).
        trace_points: coordinates traced for the diagnostics (plus the mean over all coordinates).
        seed: seed of the noise (a CPU generator; draws are moved to the chains' device).
    """

    num_samples: int = 100
    burn_in: int = 500
    thinning: int = 5
    max_stored: int = 200
    trace_points: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.thinning < 1 or self.burn_in < 0:
            raise ValueError("need num_samples >= 1, thinning >= 1 and burn_in >= 0")
        if self.max_stored < 1 or self.trace_points < 0:
            raise ValueError("need max_stored >= 1 and trace_points >= 0")

    @property
    def num_steps(self) -> int:
        return self.burn_in + self.num_samples * self.thinning


class RunningMoments:
    """Welford's running mean and variance of tensors of one shape (accumulated in float64)."""

    def __init__(self) -> None:
        self.count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        if self._mean is None:
            self._mean = torch.zeros_like(x)
            self._m2 = torch.zeros_like(x)
        elif x.shape != self._mean.shape:
            raise ValueError(f"shape {tuple(x.shape)} differs from the first one {tuple(self._mean.shape)}")
        self.count += 1
        delta = x - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (x - self._mean)

    def update_batch(self, xs: torch.Tensor) -> None:
        """Add every item of ``xs`` ``(B, ...)`` at once (Chan et al.'s pairwise merge)."""
        xs = xs.detach().to(torch.float64)
        nb = xs.shape[0]
        if nb == 0:
            return
        mean_b = xs.mean(0)
        m2_b = ((xs - mean_b) ** 2).sum(0)
        if self._mean is None:
            self.count, self._mean, self._m2 = nb, mean_b, m2_b
            return
        if mean_b.shape != self._mean.shape:
            raise ValueError(f"shape {tuple(mean_b.shape)} differs from the first one {tuple(self._mean.shape)}")
        n = self.count + nb
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (nb / n)
        self._m2 = self._m2 + m2_b + delta**2 * (self.count * nb / n)
        self.count = n

    @property
    def mean(self) -> torch.Tensor:
        if self._mean is None:
            raise ValueError("no states aggregated yet")
        return self._mean

    def state(self) -> dict:
        """The accumulators (for a resumable checkpoint)."""
        return {"count": self.count, "mean": self._mean, "m2": self._m2}

    def restore(self, state: dict) -> None:
        """Set the accumulators from :meth:`state`."""
        self.count, self._mean, self._m2 = int(state["count"]), state["mean"], state["m2"]

    def variance(self, ddof: int = 1) -> torch.Tensor:
        if self.count <= ddof:
            raise ValueError(f"variance needs more than {ddof} states, have {self.count}")
        return self._m2 / (self.count - ddof)


@dataclass
class LangevinResult:
    """Output of :func:`langevin_sample`.

    ``mean``/``variance``: over all kept states of all chains (shape of one state, float64);
    ``chain_means`` ``(C, ...)``; ``samples`` ``(C, S, ...)`` stored kept states (``S <= max_stored``);
    ``traces`` ``(C, num_samples, T)`` the traced functionals of every kept state; ``ess`` and
    ``rhat`` ``(T,)`` per traced functional (:func:`effective_sample_size`, :func:`split_rhat`);
    ``final`` the last state of each chain; ``step_size`` as used.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    chain_means: torch.Tensor
    samples: torch.Tensor
    traces: torch.Tensor
    ess: torch.Tensor
    rhat: torch.Tensor
    final: torch.Tensor
    step_size: float
    num_steps: int
    info: dict = field(default_factory=dict)

    def diagnostics(self) -> dict:
        """JSON-ready convergence summary."""
        c, n = self.traces.shape[:2]
        return {
            "chains": int(c),
            "kept_per_chain": int(n),
            "steps_per_chain": int(self.num_steps),
            "step_size": float(self.step_size),
            "ess_min": float(self.ess.min()) if self.ess.numel() else None,
            "ess_median": float(self.ess.median()) if self.ess.numel() else None,
            "ess_of_image_mean": float(self.ess[0]) if self.ess.numel() else None,
            "rhat_max": float(self.rhat.max()) if self.rhat.numel() else None,
            "rhat_of_image_mean": float(self.rhat[0]) if self.rhat.numel() else None,
        }


def langevin_step(
    x: torch.Tensor,
    grad: torch.Tensor,
    step_size: float,
    preconditioner: torch.Tensor | float,
    noise: torch.Tensor,
    reflect: bool = False,
) -> torch.Tensor:
    """``x + delta M grad + sqrt(2 delta M) noise``, reflected at zero when ``reflect``."""
    x = x + step_size * preconditioner * grad + torch.sqrt(2 * step_size * torch.as_tensor(preconditioner)) * noise
    return x.abs() if reflect else x


@dataclass(frozen=True)
class ChainCheckpoint:
    """Where and how often :func:`langevin_sample` saves its state, and what identifies the run.

    ``path``: the checkpoint file (:mod:`petuq_sirf.io.resumable`); ``every``: steps between saves;
    ``fingerprint``: JSON-ready description of the target, settings and data. A run that finds ``path``
    resumes from it if the fingerprint (and the chains' shape and step size) match, and refuses in one line
    otherwise; the file is removed once the run has finished.
    """

    path: Path
    every: int
    fingerprint: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"checkpoint interval must be >= 1 step, got {self.every}")


def langevin_sample(
    grad_log_density: GradFn,
    x0: torch.Tensor,
    step_size: float,
    config: LangevinConfig | None = None,
    preconditioner: torch.Tensor | float = 1.0,
    reflect: bool = False,
    progress: bool = False,
    desc: str = "Langevin",
    checkpoint: ChainCheckpoint | None = None,
) -> LangevinResult:
    """Run ``C = x0.shape[0]`` ULA chains from ``x0`` ``(C, ...)`` and summarise them.

    ``grad_log_density`` maps a batch ``(C, ...)`` to ``grad log pi`` of the same shape.
    ``preconditioner``: fixed ``M`` (scalar or broadcastable to one state, >= 0; zero freezes a
    coordinate). ``step_size``: ``delta`` > 0. Runs without autograd graphs kept between steps.
    ``checkpoint``: save the state every ``checkpoint.every`` steps and resume from a saved one; a resumed
    run gives exactly the result of an uninterrupted one (the noise generator's state is saved too).
    """
    cfg = config or LangevinConfig()
    if not (step_size > 0 and math.isfinite(step_size)):
        raise ValueError(f"step size must be finite and > 0, got {step_size}")
    if x0.dim() < 2:
        raise ValueError(f"x0 needs a leading chain axis (C, ...), got shape {tuple(x0.shape)}")
    pre = torch.as_tensor(preconditioner, dtype=x0.dtype, device=x0.device)
    if (pre < 0).any() or not torch.isfinite(pre).all():
        raise ValueError("the preconditioner must be finite and >= 0")
    num_chains = x0.shape[0]
    state_shape = tuple(x0.shape[1:])
    gen = torch.Generator().manual_seed(cfg.seed)
    numel = int(math.prod(state_shape))
    k = min(cfg.trace_points, numel)
    trace_idx = torch.randperm(numel, generator=gen)[:k].to(x0.device)
    store_every = max(1, math.ceil(cfg.num_samples / cfg.max_stored))
    moments = RunningMoments()
    chain_moments = RunningMoments()
    stored, traces = [], []
    x = x0.detach().clone()
    if reflect:
        x = x.abs()
    kept, start = 0, 0
    if checkpoint is not None:
        file = ResumableCheckpoint(
            checkpoint.path,
            "petuq-chain-state",
            "chain state",
            "holds the state of a run with other settings or data; delete it (or write elsewhere) to start afresh",
        )
        identity = {
            "fingerprint": checkpoint.fingerprint,
            "config": vars(cfg),
            "shape": list(x0.shape),
            "step_size": float(step_size),
            "reflect": bool(reflect),
        }
        saved = file.load(identity)
        if saved is not None:
            start, kept, stored, traces = saved["step"], saved["kept"], saved["stored"], saved["traces"]
            x = saved["x"].to(device=x0.device, dtype=x0.dtype)
            stored = [s.to(x0.device) for s in stored]
            gen.set_state(saved["generator"])
            trace_idx = saved["trace_index"].to(x0.device)
            moments.restore(saved["moments"])
            chain_moments.restore(saved["chain_moments"])

    for step in tqdm(range(start, cfg.num_steps), desc=desc, disable=not progress, initial=start, total=cfg.num_steps):
        with torch.no_grad():
            grad = grad_log_density(x)
            if not torch.isfinite(grad).all():
                raise FloatingPointError(f"non-finite gradient at Langevin step {step}; reduce the step size")
            noise = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
            x = langevin_step(x, grad, step_size, pre, noise, reflect)
        after = step + 1 - cfg.burn_in
        if after > 0 and after % cfg.thinning == 0:
            moments.update_batch(x)
            chain_moments.update(x)
            flat = x.reshape(num_chains, -1)
            traces.append(torch.cat([flat.mean(1, keepdim=True), flat[:, trace_idx]], 1).double().cpu())
            if kept % store_every == 0:
                stored.append(x.detach().clone())
            kept += 1
        if checkpoint is not None and (step + 1) % checkpoint.every == 0 and step + 1 < cfg.num_steps:
            state = {"step": step + 1, "kept": kept, "x": x, "generator": gen.get_state(), "trace_index": trace_idx}
            state.update(stored=stored, traces=traces, moments=moments.state(), chain_moments=chain_moments.state())
            file.save(identity, state)
    if checkpoint is not None:
        file.remove()  # finished: nothing to resume
    trace = torch.stack(traces, 1)  # (C, N, T)
    return LangevinResult(
        mean=moments.mean,
        variance=moments.variance(),
        chain_means=chain_moments.mean,
        samples=torch.stack(stored, 1),
        traces=trace,
        ess=effective_sample_size(trace),
        rhat=split_rhat(trace),
        final=x,
        step_size=float(step_size),
        num_steps=cfg.num_steps,
        info={"store_every": store_every, "trace_index": trace_idx.cpu()},
    )


# ------------------------------------------------------------------------------------------ diagnostics
def _as_chains(x: torch.Tensor) -> torch.Tensor:
    """``(C, N, T)`` float64 from ``(N,)``, ``(C, N)`` or ``(C, N, T)``."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.dim() == 1:
        x = x[None, :, None]
    elif x.dim() == 2:
        x = x[..., None]
    if x.dim() != 3:
        raise ValueError(f"traces must be (N,), (C, N) or (C, N, T), got shape {tuple(x.shape)}")
    return x


def _autocovariance(x: torch.Tensor) -> torch.Tensor:
    """Biased autocovariance along axis 1 of ``(C, N, T)`` by FFT (lags 0..N-1)."""
    n = x.shape[1]
    xc = x - x.mean(1, keepdim=True)
    f = torch.fft.rfft(xc, n=2 * n, dim=1)
    return torch.fft.irfft(f * f.conj(), n=2 * n, dim=1)[:, :n] / n


def effective_sample_size(traces: torch.Tensor) -> torch.Tensor:
    """Multi-chain effective sample size per traced quantity (Geyer's initial monotone sequence).

    ``traces`` ``(N,)``, ``(C, N)`` or ``(C, N, T)``; returns ``(T,)`` (``(1,)`` for fewer axes). The
    autocorrelation combines within-chain autocovariances with the between-chain variance, as in
    Stan's ``ess_bulk`` without rank normalisation.
    """
    x = _as_chains(traces)
    c, n, _ = x.shape
    if n < 4:
        raise ValueError(f"need at least 4 states per chain for an ESS, got {n}")
    acov = _autocovariance(x)  # (C, N, T)
    w = acov[:, 0].mean(0) * n / (n - 1)  # within-chain variance
    var_plus = w * (n - 1) / n
    if c > 1:
        var_plus = var_plus + x.mean(1).var(0)
    var_plus = var_plus.clamp_min(1e-300)
    rho = 1 - (w - acov.mean(0)) / var_plus  # (N, T)
    rho[0] = 1.0
    out = torch.empty(x.shape[2], dtype=torch.float64)
    for t in range(x.shape[2]):
        r = rho[:, t]
        pairs = r[: (n // 2) * 2].reshape(-1, 2).sum(1)  # Gamma_k = rho_2k + rho_2k+1
        total, prev = 0.0, math.inf
        for g in pairs.tolist():
            if g <= 0:
                break
            g = min(g, prev)  # monotone
            total += g
            prev = g
        tau = max(-1.0 + 2.0 * total, 1.0 / math.log10(max(c * n, 10)))
        out[t] = c * n / tau
    return out


def split_rhat(traces: torch.Tensor) -> torch.Tensor:
    """Split potential scale reduction factor per traced quantity (``(T,)``); near 1 when converged."""
    x = _as_chains(traces)
    n = x.shape[1] // 2
    if n < 2:
        raise ValueError("need at least 4 states per chain for R-hat")
    halves = torch.cat([x[:, :n], x[:, -n:]], 0)  # (2C, n, T)
    w = halves.var(1).mean(0)
    b = n * halves.mean(1).var(0)
    var_plus = (n - 1) / n * w + b / n
    return torch.sqrt(var_plus / w.clamp_min(1e-300))


def power_iteration(
    op: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor, iterations: int = 30, seed: int = 0
) -> float:
    """Largest eigenvalue of a symmetric positive semi-definite linear ``op`` (acting like ``like``)."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.rand(like.shape, generator=gen, dtype=like.dtype).to(like.device) + 0.1
    v = v / v.norm()
    lam = 0.0
    for _ in range(iterations):
        w = op(v)
        lam = float((v * w).sum())
        norm = w.norm()
        if not norm > 0:
            return 0.0
        v = w / norm
    return max(lam, float(op(v).norm()))
