"""Reconstruct an acquisition by method name: OSEM, MLEM, MAP-RDP, PnP-ADMM, PnP-ULA or the unrolled network.

:func:`reconstruct` chooses and runs the method from a :class:`ReconstructionSettings` and returns a
:class:`ReconstructionResult` (images, metrics and the figure's panels) whose :meth:`~ReconstructionResult.write`
puts them in a folder: what ``petuq reconstruct`` does, available to scripts::

    from petuq_sirf.io import load_acquisition
    from petuq_sirf.pipelines import ReconstructionSettings, reconstruct

    result = reconstruct(load_acquisition("acq"), ReconstructionSettings(method="map-rdp", iterations=100))
    result.write("rec")        # image.nii.gz, image.hv, image.png, metrics.json

The uncertainty methods (``pnp-admm``, ``pnp-ula``, ``unrolled``) load trained weights
(:func:`~petuq_sirf.recon.weights.load_network`; the shipped test-2d folders without ``weights``) and write
mean / std / interval images. The PnP-ADMM spread comes from denoiser weight draws only and is labelled
"model spread only" in every output.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from petuq_sirf.io.acquisition_folder import Acquisition
from petuq_sirf.io.atomic import atomic_write_json
from petuq_sirf.io.image_io import write_image
from petuq_sirf.io.resumable import tensor_digest
from petuq_sirf.recon import RelativeDifferencePrior, gaussian_postfilter, map_rdp, osem
from petuq_sirf.uq.figures_of_merit import image_metrics
from petuq_sirf.viz.images import image_panel
from petuq_sirf.viz.labels import activity_units, reconstruction_title

CLASSICAL_METHODS = ("osem", "mlem", "map-rdp")
UQ_METHODS = ("pnp-admm", "pnp-ula", "unrolled")
METHODS = CLASSICAL_METHODS + UQ_METHODS
DEFAULT_ITERATIONS = {"osem": 10, "mlem": 50, "map-rdp": 100, "pnp-admm": 100, "pnp-ula": 1000, "unrolled": 1}

MODEL_SPREAD_ONLY = "model spread only"
SPREAD = {
    "pnp-admm": "model spread only: PnP-ADMM fixed points over denoiser weight draws; the data noise is not "
    "in it (measured std 1-5 % of the error), so these are not error bars",
    "pnp-ula": "posterior (data + prior): PnP-ULA Langevin samples of the Poisson likelihood times the denoiser prior",
    "unrolled": "posterior predictive: weight draws (epistemic) plus the aleatoric head",
}


@dataclass(frozen=True)
class ReconstructionSettings:
    """What to run; the fields are the options of ``petuq reconstruct``.

    ``iterations``: OSEM/MLEM/MAP-RDP iterations, ADMM iterations (pnp-admm), burn-in Langevin steps per
    chain (pnp-ula); ignored by the unrolled network; ``None`` = :data:`DEFAULT_ITERATIONS` of the method.
    ``beta_strength`` scales the RDP relative to the mean sensitivity; ``beta`` (absolute) overrides it.
    ``samples``: posterior draws (pnp-ula: kept states over all ``chains``, every ``thinning``-th step after
    the burn-in). ``weights``: a weights folder for the network methods (``None``: the shipped ones);
    ``force`` applies them to data of another voxel size. ``backend``: the acquisition-model backend of
    the classical methods (the network methods run on the embedded backend). ``checkpoint_every``
    (pnp-ula): Langevin steps between saves of the chains' state when :func:`reconstruct` is given a
    ``state_dir`` (0: never). ``tolerance`` (map-rdp): stop before ``iterations`` once an iteration changes
    the image by less than this fraction (0: run them all). ``refine_discrepancy`` (unrolled; ``None`` = on for the
    unrolled network): move the network's mean by MLEM iterations until the data are fit as well as Poisson noise
    allows (discrepancy ``z <= discrepancy_threshold``, :mod:`petuq_sirf.recon.discrepancy`); the samples move
    with it, and the stored calibration should have been fitted with the same setting (a warning otherwise).
    """

    method: str = "osem"
    iterations: int | None = None
    subsets: int = 8
    beta_strength: float = 0.01
    beta: float | None = None
    postfilter_fwhm_mm: float = 0.0
    samples: int = 16
    chains: int = 4
    thinning: int = 10
    weights: str | None = None
    force: bool = False
    backend: str = "embedded"
    checkpoint_every: int = 500
    tolerance: float = 1e-4
    refine_discrepancy: bool | None = None
    discrepancy_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown reconstruction method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.iterations is None:
            object.__setattr__(self, "iterations", DEFAULT_ITERATIONS[self.method])
        if self.iterations < 0:
            raise ValueError("--iterations must be >= 0")
        if self.subsets < 1:
            raise ValueError("--subsets must be >= 1")
        if self.checkpoint_every < 0:
            raise ValueError("--checkpoint-every must be >= 0 (0: no checkpoints)")
        if not self.tolerance >= 0:
            raise ValueError("--tolerance must be >= 0 (0: run every iteration)")
        if not math.isfinite(self.discrepancy_threshold):
            raise ValueError("--discrepancy-threshold must be finite")
        if self.refine_discrepancy and self.method != "unrolled":
            raise ValueError("--refine-discrepancy applies to --method unrolled only")
        if self.refine_discrepancy is None:  # on by default for the unrolled network
            object.__setattr__(self, "refine_discrepancy", self.method == "unrolled")
        if self.method in UQ_METHODS:
            if self.samples < 2:
                raise ValueError("--samples must be >= 2 for an uncertainty estimate")
            if self.iterations < 1:
                raise ValueError("--iterations must be >= 1")
        if self.method == "pnp-ula":
            if self.chains < 1 or self.thinning < 1:
                raise ValueError("--chains and --thinning must be >= 1")
            per_chain = -(-self.samples // self.chains)
            if per_chain < 4:
                raise ValueError(f"--samples {self.samples} gives {per_chain} states per chain; need >= 4 per chain")

    @property
    def network_kind(self) -> str | None:
        """The kind of trained network the method needs (``pnp-admm`` / ``unrolled``), ``None`` for the others."""
        if self.method not in UQ_METHODS:
            return None
        return "unrolled" if self.method == "unrolled" else "pnp-admm"


@dataclass
class MethodNetwork:
    """A trained network loaded for a method: ``(net, posterior, info)`` of :func:`load_network`."""

    net: torch.nn.Module
    posterior: object | None
    info: dict


def load_method_network(settings: ReconstructionSettings) -> MethodNetwork | None:
    """The trained network of ``settings.method`` (``None`` for OSEM/MLEM/MAP-RDP), checked before any data is read."""
    from petuq_sirf.recon.weights import load_network

    kind = settings.network_kind
    if kind is None:
        return None
    net, posterior, info = load_network(kind, settings.weights)
    if posterior is None and settings.method != "pnp-ula":
        raise ValueError("the weights file has no posterior (trained with --svi-steps 0); cannot sample")
    return MethodNetwork(net, posterior, info)


@dataclass
class ReconstructionResult:
    """Images (name -> (z, y, x) tensor on the CPU), ``metrics`` (JSON-ready) and the figure of one reconstruction.

    ``interfile``: names also written as Interfile (``.hv``, STIR's axial origin). ``panels`` are the
    figure's images by title; those in ``shared_scale`` share colour limits.
    """

    method: str
    images: dict[str, torch.Tensor]
    metrics: dict
    panels: dict[str, torch.Tensor]
    shared_scale: tuple[str, ...]
    acquisition: Acquisition
    interfile: tuple[str, ...] = ()
    summary: object | None = field(default=None, repr=False)

    def write(self, out: str | os.PathLike, figure: str = "image.png") -> dict[str, Path]:
        """Write every image as NIfTI (and Interfile for ``interfile``), the figure and ``metrics.json`` into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        acq = self.acquisition
        paths: dict[str, Path] = {}
        for name, img in self.images.items():
            arr = img.cpu().numpy()
            paths[name] = write_image(out / f"{name}.nii.gz", arr, acq.image)
            if name in self.interfile:
                write_image(out / f"{name}.hv", arr, acq.image, acq.layout.scanner)
        paths["figure"] = image_panel(
            self.panels, out / figure, shared_scale=self.shared_scale, units=activity_units(acq.info)
        )
        paths["metrics"] = atomic_write_json(out / "metrics.json", self.metrics)
        return paths


def reconstruct(
    acquisition: Acquisition,
    settings: ReconstructionSettings | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    network: MethodNetwork | None = None,
    state_dir: str | Path | None = None,
) -> ReconstructionResult:
    """Reconstruct ``acquisition`` with ``settings.method`` on ``device`` (default CPU).

    ``network``: the method's trained network when already loaded (:func:`load_method_network`); loaded
    from ``settings.weights`` otherwise. Metrics against the truth are included when the acquisition has one.
    ``state_dir`` (pnp-ula): folder for the resumable chain state (:data:`PNP_ULA_STATE`), written every
    ``settings.checkpoint_every`` steps; a run of the same settings, data and weights resumes from it.
    """
    settings = settings or ReconstructionSettings()
    device = torch.device(device or "cpu")
    if settings.method in UQ_METHODS:
        net = network or load_method_network(settings)
        return _reconstruct_uq(acquisition, settings, device, progress, net, state_dir)
    return _reconstruct_classical(acquisition, settings, device, progress)


def _reconstruct_classical(
    acq: Acquisition, s: ReconstructionSettings, device: torch.device, progress: bool
) -> ReconstructionResult:
    from petuq_sirf.backends.registry import acquisition_model_for, require_backend

    backend = require_backend(s.backend)
    model = acquisition_model_for(acq, backend, device)
    y = acq.prompts.to(device)
    if s.method == "mlem":
        rec = osem(model, y, s.iterations, 1, progress=progress)
    elif s.method == "osem":
        rec = osem(model, y, s.iterations, s.subsets, progress=progress)
    else:
        init = osem(model, y, 2, s.subsets).image
        if s.beta is not None:
            prior = RelativeDifferencePrior.scaled_for(model.sensitivity(), init, strength=1.0)
            prior.beta = s.beta
        else:
            prior = RelativeDifferencePrior.scaled_for(model.sensitivity(), init, strength=s.beta_strength)
        rec = map_rdp(model, y, prior, s.iterations, x0=init, progress=progress, tolerance=s.tolerance)
    image = rec.image
    if s.postfilter_fwhm_mm > 0:
        image = gaussian_postfilter(image, s.postfilter_fwhm_mm, acq.image.voxel_size_mm)
    image = image.cpu()
    metrics = {
        "command": "reconstruct",
        "method": s.method,
        "backend": backend,
        "iterations": s.iterations,
        "subsets": s.subsets if s.method == "osem" else 1,
        "objective": rec.objective[-1] if rec.objective else None,
        "projector": model.projector_settings() if hasattr(model, "projector_settings") else None,
    }
    if s.method == "map-rdp":
        metrics.update(_map_convergence(rec))
    label = reconstruction_title(
        s.method,
        s.iterations,
        s.subsets if s.method != "mlem" else None,
        beta=s.beta if s.method == "map-rdp" else None,
        beta_strength=s.beta_strength if s.method == "map-rdp" else None,
        postfilter_fwhm_mm=s.postfilter_fwhm_mm,
    )
    panels = {label: image}
    if acq.truth is not None:
        metrics["metrics"] = image_metrics(image, acq.truth, acq.regions, acq.contrast)
        panels = {"truth": acq.truth, **panels}
    return ReconstructionResult(
        s.method, {"image": image}, metrics, panels, tuple(panels), acq, interfile=("image",), summary=rec
    )


PNP_ULA_STATE = "pnp_ula_state.pt"  # resumable chain state inside the output folder (removed when done)
MAP_UPDATE_TOLERANCE = 1e-4  # relative image change per iteration above which MAP-RDP is reported as not converged


def _map_convergence(rec) -> dict:
    """``metrics.json`` entries on how far MAP-RDP got; warns when it stopped while still moving."""
    change = rec.relative_update
    converged = rec.stop_reason is not None or (change is not None and change <= MAP_UPDATE_TOLERANCE)
    if not converged:
        shown = "unknown" if change is None else f"{100 * change:.2g} %"
        warnings.warn(
            f"MAP-RDP stopped after {rec.iterations_run} iterations while the image still changed by {shown} per "
            "iteration: this is not yet the MAP estimate (more --iterations converge further)",
            stacklevel=4,  # the caller of reconstruct()
        )
    return {
        "iterations_run": rec.iterations_run,
        "relative_update_last_iteration": change,
        "stopped_at_convergence": rec.stop_reason is not None,
        "converged": converged,
    }


def _reconstruct_uq(
    acq: Acquisition,
    s: ReconstructionSettings,
    device: torch.device,
    progress: bool,
    network: MethodNetwork,
    state_dir: str | Path | None = None,
) -> ReconstructionResult:
    from petuq_sirf.backends.registry import acquisition_model_for
    from petuq_sirf.recon.pnp_admm import PnPADMMConfig, pnp_admm_posterior
    from petuq_sirf.recon.unrolled import predict_unrolled
    from petuq_sirf.recon.weights import calibration_for_counts, conformal_scales_of, mondrian_of, std_scaling_of
    from petuq_sirf.uq.calibration import evaluate_uq, gaussian_interval

    net, info = network.net, network.info
    model = acquisition_model_for(acq, "embedded", device)
    y = acq.prompts.to(device)
    net.to(device)
    posterior = network.posterior.to(device) if network.posterior is not None else None
    trained_voxel = info.get("voxel_size_mm")
    if trained_voxel and [round(v, 3) for v in trained_voxel[1:]] != [round(v, 3) for v in acq.image.voxel_size_mm[1:]]:
        msg = f"the weights were trained on {trained_voxel} mm voxels, the data has {list(acq.image.voxel_size_mm)} mm"
        if not s.force:
            raise ValueError(msg + " (--force applies them anyway)")
        warnings.warn(msg + " (applied anyway: --force)", stacklevel=2)
    t0 = time.perf_counter()
    extra: dict = {}
    if s.method == "pnp-admm":
        cfg = PnPADMMConfig(num_iterations=s.iterations)
        post = pnp_admm_posterior(model, y, net, posterior, s.samples, cfg, progress=progress)
        summary = post.summary
        extra = {
            "admm_iterations": cfg.num_iterations,
            "rho_rel": cfg.rho_rel,
            "fixed_point_residual_first": [r[0] for r in post.residuals],
            "fixed_point_residual_last": [r[-1] for r in post.residuals],
            "jacobian_norms_2D_minus_I": post.jacobian_norms,
            "rejected_draws": post.rejected,
        }
    elif s.method == "pnp-ula":
        from petuq_sirf.recon.pnp_ula import PnPULAConfig, body_support, pnp_ula

        per_chain = -(-s.samples // s.chains)
        cfg_ula = PnPULAConfig(num_samples=per_chain, burn_in=s.iterations, thinning=s.thinning, num_chains=s.chains)
        support = body_support(acq.mu_per_cm) if acq.mu_per_cm is not None else None
        state = Path(state_dir) / PNP_ULA_STATE if state_dir is not None and s.checkpoint_every > 0 else None
        res = pnp_ula(
            model,
            y,
            net,
            cfg_ula,
            support=support,
            progress=progress,
            state_path=state,
            state_every=max(1, s.checkpoint_every),
            identity={"weights_sha256": tensor_digest(*net.state_dict().values())} if state is not None else None,
        )
        summary = res.summary
        extra = {
            "burn_in": cfg_ula.burn_in,
            "thinning": cfg_ula.thinning,
            "chains": cfg_ula.num_chains,
            "denoiser_sigma": cfg_ula.denoiser_sigma,
            "alpha": cfg_ula.alpha,
            "support": "mu-map > 0 dilated by 2 voxels" if support is not None else "whole field of view",
            **{k: v for k, v in res.settings.items() if k != "diagnostics"},
            "diagnostics": res.settings["diagnostics"],
        }
    else:
        x0 = osem(model, y, 10, 1).image
        summary = predict_unrolled(net, model, y, x0, posterior, s.samples)
        if s.refine_discrepancy:
            from petuq_sirf.recon.discrepancy import DEFAULT_MAX_ITERATIONS, refine_posterior_mean

            summary, ref = refine_posterior_mean(model, y, summary, s.discrepancy_threshold, check_model_fit=True)
            extra["discrepancy_refinement"] = {
                "threshold": s.discrepancy_threshold,
                "stop_threshold": float(ref.threshold),  # raised by the model error's excess z
                "model_error_z": float(ref.model_error_z),
                "mlem_iterations": int(ref.iterations),
                "z_before": float(ref.z_start),
                "z_after": float(ref.z_end),
                "reached": bool(ref.reached),
                "model_fit_z": float(ref.model_fit_z),
                "skipped_model_misfit": bool(ref.skipped),
            }
            if bool(ref.skipped):
                warnings.warn(
                    f"not refined: even an unregularised OSEM fit leaves the data under-fit (z = "
                    f"{float(ref.model_fit_z):.1f} > 0), so the model's normalisation, attenuation, randoms or scatter "
                    "are probably off; the network's own mean is used",
                    stacklevel=2,
                )
            elif not bool(ref.reached):
                warnings.warn(
                    f"the discrepancy refinement stopped after {DEFAULT_MAX_ITERATIONS} MLEM iterations with the data "
                    f"still under-fit (z = {float(ref.z_end):.2f} > {float(ref.threshold):g})",
                    stacklevel=2,
                )
    seconds = time.perf_counter() - t0
    mean, std = summary.mean.cpu(), summary.std.cpu()
    lo, hi = summary.interval(0.9)
    spread_only = s.method == "pnp-admm"
    tag = "_model_spread_only" if spread_only else ""
    images = {"image": mean, "mean": mean, f"std{tag}": std, f"lower_90{tag}": lo.cpu(), f"upper_90{tag}": hi.cpu()}
    if not spread_only:
        images["epistemic_std"] = summary.epistemic_std.cpu()
        images["aleatoric_std"] = summary.aleatoric_std.cpu()
    calibration_level = None
    if s.method == "unrolled":  # the stored calibration for the count level nearest the data's
        trues = max(float((acq.prompts - acq.additive).sum()), 1.0)  # expected trues: prompts minus randoms + scatter
        info, calibration_level = calibration_for_counts(info, trues)
        if calibration_level is not None:
            extra["estimated_true_counts"] = trues
            extra["calibration_true_counts"] = calibration_level
            levels = [float(k) for k in network.info["calibration_by_counts"]]
            if not min(levels) / 2 <= trues <= 2 * max(levels):
                warnings.warn(
                    f"the data has about {trues:.3g} true counts, outside the calibrated range "
                    f"{min(levels):.3g}-{max(levels):.3g}: the intervals use the nearest level's calibration",
                    stacklevel=2,
                )
    if s.method == "unrolled":  # a calibration describes one estimator: refined or not, at one threshold
        fitted = info.get("calibration", {}).get("discrepancy_threshold")
        used = s.discrepancy_threshold if s.refine_discrepancy else None
        extra["calibration_discrepancy_threshold"] = fitted
        if "calibration" in info and fitted != used:

            def what(t):
                return "network's own mean" if t is None else f"mean refined at discrepancy threshold {t:g}"

            warnings.warn(
                f"the stored calibration was fitted on the {what(fitted)}, this run uses the {what(used)}: its "
                "calibrated intervals may not hold (run 'petuq calibrate-unrolled' with the same setting)",
                stacklevel=2,
            )
    scales = conformal_scales_of(info) if s.method == "unrolled" else {}
    for level in (0.9, 0.95):
        if level in scales:  # split-conformal interval mean -/+ scale z std (scales stored with the weights)
            lo_c, hi_c = gaussian_interval(mean, std, level, scales[level])
            images[f"lower_{round(level * 100)}_conformal"] = lo_c.clamp_min(0)
            images[f"upper_{round(level * 100)}_conformal"] = hi_c
    mondrian = mondrian_of(info) if s.method == "unrolled" else None
    if mondrian is not None:  # per-voxel-class conformal interval (classes from the mean image)
        from petuq_sirf.uq.mondrian import voxel_classes

        classes = voxel_classes(mean, acq.image.voxel_size_mm, mondrian.spec)
        lo_m, hi_m = mondrian.interval(classes, 0.9, mean=mean, std=std)
        images["lower_90_mondrian"] = lo_m.clamp_min(0).float()
        images["upper_90_mondrian"] = hi_m.float()
    std_scaling = std_scaling_of(info) if s.method == "unrolled" else None
    if std_scaling is not None:  # per-voxel-class std that describes the total error (bias included)
        from petuq_sirf.uq.mondrian import VoxelClassSpec, voxel_classes

        spec = mondrian.spec if mondrian is not None else VoxelClassSpec()
        classes = voxel_classes(mean, acq.image.voxel_size_mm, spec)
        images["std_calibrated"] = std_scaling.scaled_std(classes, std).float()
    num_samples = int(summary.samples.shape[0])
    metrics = {
        "command": "reconstruct",
        "method": s.method,
        "samples": num_samples,
        "seconds": seconds,
        "weights": info.get("command", ""),
        "spread": SPREAD[s.method],
        **extra,
    }
    if scales:
        metrics["conformal_scales"] = {f"{k:.2f}": v for k, v in scales.items()}
    setting = reconstruction_title(s.method, s.iterations if s.method in ("pnp-admm", "pnp-ula") else None)
    setting += f", {num_samples} samples" + (f" ({MODEL_SPREAD_ONLY})" if spread_only else "")
    std_name = f"posterior std ({MODEL_SPREAD_ONLY})" if spread_only else "posterior std"
    panels = {f"{setting}: posterior mean": mean, std_name: std}
    if acq.truth is not None:
        truth = acq.truth.cpu()
        metrics["metrics"] = image_metrics(mean, truth, acq.regions, acq.contrast)
        body = acq.regions.get("background")
        uq_key = f"uq_{MODEL_SPREAD_ONLY.replace(' ', '_')}" if spread_only else "uq"
        metrics[uq_key] = evaluate_uq(truth, samples=summary.samples.cpu(), mask=body, regions=acq.regions)
        if scales:
            levels = tuple(sorted(scales))
            metrics["uq_conformal"] = evaluate_uq(
                truth, mean=mean, std=std, mask=body, regions=acq.regions, levels=levels, scale=scales
            )
            metrics["coverage_raw_vs_conformal"] = {
                f"{v:.2f}": {
                    "raw": metrics["uq"]["coverage"].get(f"{v:.2f}"),
                    "conformal": metrics["uq_conformal"]["coverage"][f"{v:.2f}"],
                }
                for v in levels
            }
        panels = {"truth": truth, **panels}
    shared = tuple(k for k in panels if "std" not in k)
    return ReconstructionResult(s.method, images, metrics, panels, shared, acq, summary=summary)


__all__ = [
    "CLASSICAL_METHODS",
    "DEFAULT_ITERATIONS",
    "METHODS",
    "MODEL_SPREAD_ONLY",
    "SPREAD",
    "UQ_METHODS",
    "MethodNetwork",
    "ReconstructionResult",
    "ReconstructionSettings",
    "load_method_network",
    "reconstruct",
]
