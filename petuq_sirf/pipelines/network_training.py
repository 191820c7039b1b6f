"""Train and calibrate the reconstruction networks on simulated data: what ``petuq train-unrolled``,
``petuq calibrate-unrolled`` and ``petuq train-pnp-denoiser`` run.

* :func:`train_unrolled_network` — the unrolled FBSEM network with Bayesian CNN blocks on simulated
  low-dose data (SVI or PMC/AIS weight posterior), optionally split-conformal calibrated.
* :func:`calibrate_unrolled_network` — add split-conformal (and, with phantom families, Mondrian) scales to
  a trained unrolled network without retraining.
* :func:`train_pnp_denoiser_network` — the firmly nonexpansive CNN denoiser for PnP-ADMM and its posterior.

Each returns a :class:`TrainedNetwork` whose :meth:`~TrainedNetwork.save` writes a weights folder
(``model.safetensors`` + ``config.json``, :func:`petuq_sirf.inference.weight_posterior.save_posterior`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner

PSF_FWHM_MM = 4.0  # resolution of the simulated training data (Gaussian FWHM)


def scanner_geometry(scanner: str) -> tuple[SinogramLayout, ImageGeometry]:
    """The sinogram layout of the named scanner and its default image grid."""
    layout = SinogramLayout(get_scanner(scanner))
    return layout, ImageGeometry.for_layout(layout)


@dataclass(frozen=True)
class CalibrationSettings:
    """Held-out phantoms for the split-conformal scales of an unrolled network.

    ``phantoms``: phantoms (per family with ``families``; 0 = no calibration), simulated like the validation
    set from seeds ``seed + 2000`` with a hot lesion of probability ``lesion_probability``; ``samples``
    posterior draws per phantom. ``families`` (brain, thorax, ellipses, texture): calibrate on these anatomical
    families' calibration seeds instead, and store Mondrian (per voxel class) quantiles too. ``counts_levels``:
    also calibrate at these expected true counts (each stored in ``calibration_by_counts``; reconstruction
    picks the level nearest the data's counts), because a network's std does not fall with the counts as
    its error does, so scales calibrated at one dose under- or over-cover at another. ``refine_threshold``: calibrate
    the discrepancy-refined mean (``petuq reconstruct --refine-discrepancy``, the default) at this threshold (default
    0, as :class:`~petuq_sirf.pipelines.reconstruction.ReconstructionSettings`); ``None``: the network's own mean. Recorded as ``info["calibration"]["discrepancy_threshold"]``.
    """

    phantoms: int = 16
    lesion_probability: float = 0.0
    samples: int = 8
    families: tuple[str, ...] = ()
    seed: int = 0
    counts_levels: tuple[float, ...] = ()
    refine_threshold: float | None = 0.0

    def __post_init__(self) -> None:
        if self.refine_threshold is not None and not math.isfinite(self.refine_threshold):
            raise ValueError("--discrepancy-threshold must be finite")
        if self.phantoms < 0 or self.samples < 2:
            raise ValueError("--calibration-phantoms must be >= 0 and --calibration-samples >= 2")
        if any(not (c > 0 and math.isfinite(c)) for c in self.counts_levels):
            raise ValueError(f"--calibration-counts must be positive true counts, got {list(self.counts_levels)}")
        if not 0 <= self.lesion_probability <= 1:
            raise ValueError("--calibration-lesion-probability must be in [0, 1]")
        from petuq_sirf.simulation.phantom_families import check_families

        check_families(self.families)


def calibrate_unrolled(net, posterior, layout, image, geometric, counts: float, cal: CalibrationSettings) -> dict:
    """``{"conformal_scales": {"0.90": ...}, "calibration": {...}}`` (and ``"mondrian"``, ``"std_scaling"`` with families);
    empty without calibration phantoms."""
    if cal.phantoms == 0:
        return {}
    if cal.families:
        return _calibrate_families(net, posterior, layout, image, geometric, counts, cal)
    from petuq_sirf.recon.lowdose import LowDoseConfig, make_low_dose_set
    from petuq_sirf.recon.unrolled import calibrate_unrolled as conformal_scales

    cfg = LowDoseConfig(cal.phantoms, counts, lesion_probability=cal.lesion_probability, seed=cal.seed + 2000)
    data = make_low_dose_set(layout, image, cfg, geometric)
    scales = conformal_scales(
        net, data, geometric, posterior, cal.samples, seed=cal.seed, refine_threshold=cal.refine_threshold
    )
    return {
        "conformal_scales": {f"{k:.2f}": v for k, v in scales.items()},
        "calibration": {
            "phantoms": cfg.num_phantoms,
            "true_counts": cfg.true_counts,
            "lesion_probability": cfg.lesion_probability,
            "seed": cfg.seed,
            "samples": cal.samples,
            "mask": "background (body) of each phantom",
            "discrepancy_threshold": cal.refine_threshold,
        },
    }


def calibrate_unrolled_levels(
    net, posterior, layout, image, geometric, counts: float, cal: CalibrationSettings
) -> dict:
    """:func:`calibrate_unrolled` at ``counts`` (the top-level keys, as before) and, with ``cal.counts_levels``,
    at every level and ``counts`` again under ``calibration_by_counts[f"{level:g}"]``."""
    if not cal.counts_levels or cal.phantoms == 0:
        return calibrate_unrolled(net, posterior, layout, image, geometric, counts, cal)
    levels = sorted({float(counts), *map(float, cal.counts_levels)})
    by = {f"{c:g}": calibrate_unrolled(net, posterior, layout, image, geometric, c, cal) for c in levels}
    return {**by[f"{float(counts):g}"], "calibration_by_counts": by}  # the training level is computed once


def _calibrate_families(net, posterior, layout, image, geometric, counts: float, cal: CalibrationSettings) -> dict:
    """Global and Mondrian conformal calibration on anatomical calibration phantoms."""
    from petuq_sirf.recon.family_data import calibrate_unrolled_classes, family_low_dose_set
    from petuq_sirf.uq.calibration import gaussian_quantile

    families = list(cal.families)
    data = family_low_dose_set(layout, image, families, "calibration", cal.phantoms, counts, geometric)
    mondrian, std_scaling = calibrate_unrolled_classes(
        net, data, geometric, posterior, cal.samples, seed=cal.seed, refine_threshold=cal.refine_threshold
    )
    scales = {lv: q / gaussian_quantile(lv) for lv, q in mondrian.global_quantiles.items()}
    return {
        "conformal_scales": {f"{k:.2f}": v for k, v in scales.items()},
        "mondrian": mondrian.to_dict(),
        "std_scaling": std_scaling.to_dict(),
        "calibration": {
            "families": families,
            "phantoms_per_family": cal.phantoms,
            "split": "calibration",
            "true_counts": counts,
            "samples": cal.samples,
            "mask": "body outline of the predicted mean (voxel classes < num_classes)",
            "discrepancy_threshold": cal.refine_threshold,
        },
    }


@dataclass
class TrainedNetwork:
    """A trained (or re-calibrated) network, its weight posterior (or ``None``) and its ``info`` record."""

    net: torch.nn.Module
    posterior: object | None
    info: dict

    def save(self, out: str | os.PathLike) -> Path:
        """Write the weights folder ``out`` (``model.safetensors`` + ``config.json``) from the CPU."""
        from petuq_sirf.inference.weight_posterior import save_posterior

        self.net.cpu()
        posterior = self.posterior.to("cpu") if self.posterior is not None else None
        return save_posterior(out, self.net, posterior, {"info": json.dumps(self.info)})


@dataclass(frozen=True)
class UnrolledTrainingSettings:
    """The options of ``petuq train-unrolled`` (see its ``--help``)."""

    scanner: str = "test-2d"
    phantoms: int = 32
    validation_phantoms: int = 8
    counts: float = 5e4
    unrolled_iterations: int = 6
    channels: int = 16
    steps: int = 300
    head_steps: int = 100
    svi_steps: int = 100
    posterior: str = "svi"
    ais_iterations: int = 6
    ais_draws: int = 16
    ais_sigma: float = 2e-4
    batch_size: int = 4
    seed: int = 0
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    families: tuple[str, ...] = ()
    counts_range: tuple[float, float] | None = None
    dose_input: bool = False
    regulariser: str = "cnn"
    init_weights: str | None = None
    svi_learn_loc: bool = True

    def __post_init__(self) -> None:
        if self.phantoms < 1 or self.validation_phantoms < 1:
            raise ValueError("--phantoms and --validation-phantoms must be >= 1")
        if self.regulariser not in ("cnn", "dbfb"):
            raise ValueError(f"unknown --regulariser {self.regulariser!r}: choose cnn or dbfb")
        if self.counts_range is not None and not 0 < self.counts_range[0] <= self.counts_range[1]:
            raise ValueError(f"--counts-range must be LOW,HIGH with 0 < LOW <= HIGH, got {self.counts_range}")
        from petuq_sirf.simulation.phantom_families import check_families

        check_families(self.families)
        if self.posterior not in ("svi", "ais"):
            raise ValueError(f"unknown weight posterior {self.posterior!r}: choose svi or ais")
        if self.posterior == "ais" and (self.ais_iterations < 1 or self.ais_draws < 2 or not self.ais_sigma > 0):
            raise ValueError("--ais-iterations must be >= 1, --ais-draws >= 2 and --ais-sigma > 0")


def train_unrolled_network(
    settings: UnrolledTrainingSettings,
    device: torch.device | str | None = None,
    progress: bool = False,
    command: str = "",
) -> TrainedNetwork:
    """Train the unrolled network on simulated low-dose data, fit its weight posterior, calibrate it.

    ``info`` records the network configuration, grid, count level, training settings, validation MSE per
    step, the posterior (``ais``: ESS and particles), the conformal scales and ``command``.
    """
    from petuq_sirf.recon.lowdose import LowDoseConfig, make_low_dose_set
    from petuq_sirf.recon.unrolled import UnrolledConfig, UnrolledTrainingConfig, train_unrolled
    from petuq_sirf.simulation.simulate import geometric_model

    s = settings
    device = torch.device(device or "cpu")
    layout, image = scanner_geometry(s.scanner)
    geometric = geometric_model(layout, image, PSF_FWHM_MM, device=device)
    init_net, init_info = None, {}
    if s.init_weights is not None:  # continue from a weights folder: its architecture, its point weights
        from petuq_sirf.recon.weights import load_network

        init_net, _, init_info = load_network("unrolled", s.init_weights)
        if init_info.get("scanner", "test-2d") != s.scanner:
            raise ValueError(
                f"--init-weights {s.init_weights} was trained for scanner {init_info.get('scanner')!r}, not {s.scanner!r}"
            )
        net_cfg = init_net.config
        defaults = UnrolledTrainingSettings()
        for option, asked, default, has in (
            ("--channels", s.channels, defaults.channels, net_cfg.channels),
            ("--regulariser", s.regulariser, defaults.regulariser, net_cfg.regulariser),
            ("--dose-input", s.dose_input, defaults.dose_input, net_cfg.dose_input),
        ):  # an architecture option set away from its default must agree with the starting network
            if asked != default and asked != has:
                raise ValueError(f"{option} {asked} disagrees with --init-weights {s.init_weights} ({option} {has})")
        asked = s.unrolled_iterations
        if asked != defaults.unrolled_iterations and asked != net_cfg.num_iterations:
            if asked < net_cfg.num_iterations:
                raise ValueError(
                    f"--unrolled-iterations {asked} is fewer than --init-weights {s.init_weights} has "
                    f"({net_cfg.num_iterations}); a network can only be unrolled further"
                )
            init_net = init_net.with_iterations(asked)  # more iterations: warm start from the shared weights
            net_cfg = init_net.config
    else:
        net_cfg = UnrolledConfig(
            num_iterations=s.unrolled_iterations,
            channels=s.channels,
            dose_input=s.dose_input,
            regulariser=s.regulariser,
        )
    t0 = time.perf_counter()
    if s.families:  # anatomical families: training seeds, validation from the training split's later seeds
        from petuq_sirf.recon.family_data import family_low_dose_set

        kw = {"counts_range": s.counts_range}
        train = family_low_dose_set(layout, image, s.families, "train", s.phantoms, s.counts, geometric, **kw)
        val = family_low_dose_set(
            layout, image, s.families, "train", s.validation_phantoms, s.counts, geometric, start=s.phantoms, **kw
        )
    else:
        if s.counts_range is not None:
            raise ValueError("--counts-range needs --families (the random-ellipse sets have one count level)")
        train = make_low_dose_set(layout, image, LowDoseConfig(s.phantoms, s.counts, seed=s.seed), geometric)
        val = make_low_dose_set(
            layout, image, LowDoseConfig(s.validation_phantoms, s.counts, seed=s.seed + 1000), geometric
        )
    cfg = UnrolledTrainingConfig(
        num_steps=s.steps,
        head_steps=s.head_steps,
        svi_steps=s.svi_steps if s.posterior == "svi" else 0,
        batch_size=s.batch_size,
        seed=s.seed,
        relative_loss=s.counts_range is not None,
        svi_learn_loc=s.svi_learn_loc,
    )
    res = train_unrolled(train, geometric, cfg, net_cfg, validation=val, net=init_net, progress=progress)
    posterior = res.posterior
    ais_info: dict = {}
    if s.posterior == "ais":
        from petuq_sirf.recon.unrolled_ais import UnrolledAISConfig, fit_unrolled_ais

        ais_cfg = UnrolledAISConfig(num_draws=s.ais_draws)
        pmc = replace(
            ais_cfg.pmc, iterations=s.ais_iterations, sigma_prop=s.ais_sigma, init_spread=s.ais_sigma, seed=s.seed
        )
        ais_cfg = replace(ais_cfg, pmc=pmc)
        ais = fit_unrolled_ais(res.net, train, geometric, ais_cfg)
        posterior = ais.posterior
        ais_info = {
            "ais": {
                "names": ais.names,
                "ess": ais.ess,
                "particles": ais.num_particles,
                "ess_per_iteration": ais.pmc.ess_per_iteration,
                "draws": s.ais_draws,
                "images": ais_cfg.num_images,
            }
        }
    calib = calibrate_unrolled_levels(res.net, posterior, layout, image, geometric, s.counts, s.calibration)
    info = {
        "kind": "unrolled",
        "net_config": net_cfg.to_dict(),
        "scanner": s.scanner,
        "image_shape": list(image.shape),
        "voxel_size_mm": list(image.voxel_size_mm),
        "true_counts": s.counts,
        "psf_fwhm_mm": PSF_FWHM_MM,
        "phantoms": s.phantoms,
        "families": list(s.families) or ["random ellipses"],
        "counts_range": list(s.counts_range) if s.counts_range else None,
        "init_weights": s.init_weights,
        "init_weights_command": init_info.get("command"),  # how the starting network was trained
        "init_weights_seconds": init_info.get("seconds"),
        "training": vars(cfg),
        "validation_mse": res.val_losses,
        "posterior": s.posterior,
        **ais_info,
        **calib,
        "seconds": time.perf_counter() - t0,
        "command": command,
    }
    return TrainedNetwork(res.net, posterior, info)


def calibrate_unrolled_network(
    weights: str | os.PathLike | None,
    calibration: CalibrationSettings,
    device: torch.device | str | None = None,
    command: str = "",
) -> TrainedNetwork:
    """Re-calibrate the unrolled network in ``weights`` (``None``: the shipped one); the weights are unchanged.

    The new scales replace the old ones (an old Mondrian calibration is dropped); ``command`` is recorded
    in ``info["calibration"]``.
    """
    from petuq_sirf.recon.weights import load_network
    from petuq_sirf.simulation.simulate import geometric_model

    if calibration.phantoms < 1:
        raise ValueError("--calibration-phantoms must be >= 1")
    device = torch.device(device or "cpu")
    net, posterior, info = load_network("unrolled", weights)
    layout, image = scanner_geometry(info.get("scanner", "test-2d"))
    geometric = geometric_model(layout, image, info.get("psf_fwhm_mm", PSF_FWHM_MM), device=device)
    net.to(device)
    posterior = posterior.to(device) if posterior is not None else None
    calib = calibrate_unrolled_levels(net, posterior, layout, image, geometric, info["true_counts"], calibration)
    info.pop("mondrian", None)  # a new calibration replaces an old per-class one
    info.pop("std_scaling", None)
    info.pop("calibration_by_counts", None)
    info.update(calib)
    info["calibration"]["command"] = command
    return TrainedNetwork(net, posterior, info)


@dataclass(frozen=True)
class PnPDenoiserTrainingSettings:
    """The options of ``petuq train-pnp-denoiser`` (see its ``--help``)."""

    scanner: str = "test-2d"
    images: int = 64
    steps: int = 400
    noise_std: float = 0.3
    penalty: float = 1.0
    epsilon: float = 0.1
    spectral_norm: bool = False
    svi_steps: int = 100
    seed: int = 0
    #: anatomical phantom families to learn from (``images`` per family, train seeds); () = random ellipses
    families: tuple[str, ...] = ()


def train_pnp_denoiser_network(
    settings: PnPDenoiserTrainingSettings, progress: bool = False, command: str = ""
) -> TrainedNetwork:
    """Train the firmly nonexpansive denoiser and (``svi_steps > 0``) its weight posterior.

    Training images: ``images`` random ellipses, or with ``families`` ``images`` phantoms of each anatomical family
    from its *train* seeds (from the ``seed``-th). ``info["jacobian_norm_2D_minus_I_on_test"]``: the largest
    ``||J_(2D-I)||`` (power iteration, 30 steps) on 8 noisy held-out images (ellipses of seed ``seed + 12345``, or
    the families' *calibration* seeds); <= 1 means the reflected denoiser is nonexpansive there.
    """
    from petuq_sirf.inference.weight_posterior import SVIConfig
    from petuq_sirf.recon.nonexpansive import (
        NonexpansiveDenoiserConfig,
        NonexpansiveTrainingConfig,
        clean_ellipse_images,
        clean_family_images,
        fit_denoiser_posterior,
        jacobian_spectral_norm,
        reflected,
        train_nonexpansive_denoiser,
    )

    s = settings
    _, image = scanner_geometry(s.scanner)
    t0 = time.perf_counter()
    cfg = NonexpansiveTrainingConfig(
        num_images=s.images,
        num_steps=s.steps,
        noise_std=s.noise_std,
        penalty=s.penalty,
        epsilon=s.epsilon,
        seed=s.seed,
    )
    den_cfg = NonexpansiveDenoiserConfig(spectral_norm=s.spectral_norm)
    clean = clean_family_images(image, s.families, s.images, "train", start=s.seed) if s.families else None
    res = train_nonexpansive_denoiser(image, cfg, den_cfg, clean=clean, progress=progress)
    posterior = None
    if s.svi_steps > 0:
        posterior, _ = fit_denoiser_posterior(
            res.denoiser, image, cfg, SVIConfig(num_steps=s.svi_steps, init_scale=1e-3, learn_loc=False), clean=clean
        )
    if s.families:
        per_family = max(1, -(-8 // len(s.families)))
        test = clean_family_images(image, s.families, per_family, "calibration")[:8]
    else:
        test = clean_ellipse_images(image, 8, seed=s.seed + 12345)
    noisy = test + 0.2 * torch.randn(test.shape, generator=torch.Generator().manual_seed(s.seed))
    norm = float(jacobian_spectral_norm(reflected(res.denoiser), noisy, 30).max())
    info = {
        "kind": "pnp-denoiser",
        "net_config": {"channels": den_cfg.channels, "depth": den_cfg.depth, "spectral_norm": den_cfg.spectral_norm},
        "scanner": s.scanner,
        "voxel_size_mm": list(image.voxel_size_mm),
        "training": vars(cfg),
        "families": list(s.families) or ["random ellipses"],
        "jacobian_norm_2D_minus_I_on_test": norm,
        "seconds": time.perf_counter() - t0,
        "command": command,
    }
    return TrainedNetwork(res.denoiser, posterior, info)


__all__ = [
    "CalibrationSettings",
    "PnPDenoiserTrainingSettings",
    "TrainedNetwork",
    "UnrolledTrainingSettings",
    "calibrate_unrolled",
    "calibrate_unrolled_network",
    "scanner_geometry",
    "train_pnp_denoiser_network",
    "train_unrolled_network",
]
