"""Reconstruction with uncertainty: ``petuq reconstruct --method pnp-admm|unrolled``, and the trainers
``petuq train-unrolled`` and ``petuq train-pnp-denoiser``.

Weights are folders (``model.safetensors`` + ``config.json``: point weights ``net.*``, posterior
``posterior.*``, settings and checksums in the record; see :mod:`petuq_sirf.recon.weights`). Without
``--weights`` the folders shipped in ``petuq_sirf/weights/`` (trained for the test-2d demo problem) are used.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from petuq_sirf.cli.common import (
    COUNTS,
    SEED,
    add_device_argument,
    check_out_dir,
    float_in,
    int_in,
    load_acquisition,
    resolve_device,
    write_metrics,
)
from petuq_sirf.recon.weights import conformal_scales_of, load_network, mondrian_of


def _geometry(scanner: str):
    from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner

    layout = SinogramLayout(get_scanner(scanner))
    return layout, ImageGeometry.for_layout(layout)


def register(sub) -> None:
    p = sub.add_parser(
        "train-unrolled",
        help="train the unrolled FBSEM network with Bayesian CNN blocks on simulated low-dose data",
    )
    p.add_argument("--scanner", default="test-2d", help="Scanner of the simulated training data.")
    p.add_argument("--phantoms", type=int_in(1, 100_000), default=32, help="Training phantoms (random ellipses).")
    p.add_argument(
        "--validation-phantoms",
        type=int_in(1, 100_000),
        default=8,
        help="Validation phantoms (seeds from seed + 1000).",
    )
    p.add_argument("--counts", type=COUNTS, default=5e4, help="Expected true counts per acquisition.")
    p.add_argument("--unrolled-iterations", type=int_in(1, 100), default=6, help="Unrolled iterations K.")
    p.add_argument(
        "--channels", type=int_in(1, 512), default=16, help="Channels of the regulariser CNN in each iteration."
    )
    p.add_argument("--steps", type=int_in(0, 1_000_000), default=300, help="Adam steps on the mean image (MSE).")
    p.add_argument(
        "--head-steps", type=int_in(0, 1_000_000), default=100, help="Adam steps on the aleatoric head (NLL)."
    )
    p.add_argument("--svi-steps", type=int_in(0, 1_000_000), default=100, help="SVI steps for the weight posterior.")
    p.add_argument(
        "--posterior",
        choices=("svi", "ais"),
        default="svi",
        help="Weight posterior: svi (mean-field over the regulariser CNN) or ais (PMC adaptive importance "
        "sampling of log_beta and the regulariser's output bias, around the trained weights).",
    )
    p.add_argument("--ais-iterations", type=int_in(1, 10_000), default=6, help="PMC iterations (--posterior ais).")
    p.add_argument(
        "--ais-draws",
        type=int_in(2, 100_000),
        default=16,
        help="Weight draws kept after resampling (--posterior ais).",
    )
    p.add_argument(
        "--ais-sigma",
        type=float_in(0, 10, lo_open=True),
        default=2e-4,
        help="Initial PMC proposal std (--posterior ais).",
    )
    _add_calibration_arguments(p)
    p.add_argument("--batch-size", type=int_in(1, 4096), default=4, help="Acquisitions per training step.")
    p.add_argument("--seed", type=SEED, default=0, help="Seed of the training data, initialisation and batches.")
    p.add_argument("--out", required=True, help="Output weights folder (model.safetensors + config.json).")
    add_device_argument(p)
    p.set_defaults(handler=run_train_unrolled)

    c = sub.add_parser(
        "calibrate-unrolled",
        help="add split-conformal interval scales to an unrolled weights file (no retraining)",
    )
    c.add_argument("--weights", default=None, help="Input weights (default: the shipped unrolled network).")
    c.add_argument("--seed", type=SEED, default=0, help="Calibration phantoms use seeds from seed + 2000.")
    c.add_argument("--out", required=True, help="Output weights folder (may equal --weights).")
    _add_calibration_arguments(c)
    add_device_argument(c)
    c.set_defaults(handler=run_calibrate_unrolled)

    q = sub.add_parser(
        "train-pnp-denoiser",
        help="train the firmly nonexpansive CNN denoiser for PnP-ADMM and its weight posterior",
    )
    q.add_argument("--scanner", default="test-2d", help="Image grid of the training phantoms.")
    q.add_argument("--images", type=int_in(1, 100_000), default=64, help="Training phantoms (random ellipses).")
    q.add_argument("--steps", type=int_in(0, 1_000_000), default=400, help="Adam steps of the denoiser training.")
    q.add_argument(
        "--noise-std",
        type=float_in(0, 100, lo_open=True),
        default=0.3,
        help="Largest Gaussian noise level (normalised units).",
    )
    q.add_argument(
        "--penalty", type=float_in(0, 1e6), default=1.0, help="Weight of the Jacobian penalty (0 = unconstrained)."
    )
    q.add_argument(
        "--epsilon", type=float_in(0, 1, hi_open=True), default=0.1, help="Target ||J_(2D-I)||^2 <= 1 - epsilon."
    )
    q.add_argument("--spectral-norm", action="store_true", help="Spectrally normalise every convolution.")
    q.add_argument(
        "--svi-steps",
        type=int_in(0, 1_000_000),
        default=100,
        help="SVI steps for the weight posterior (0 = none).",
    )
    q.add_argument("--seed", type=SEED, default=0, help="Seed of the training images, noise and initialisation.")
    q.add_argument("--out", required=True, help="Output weights folder (model.safetensors + config.json).")
    q.set_defaults(handler=run_train_denoiser)


def _add_calibration_arguments(p) -> None:
    p.add_argument(
        "--calibration-phantoms",
        type=int_in(0, 100_000),
        default=16,
        help="Held-out phantoms (simulated like the validation set) for the split-conformal scales (0 = none).",
    )
    p.add_argument(
        "--calibration-lesion-probability",
        type=float_in(0, 1),
        default=0.0,
        help="Probability of a hot lesion in each calibration phantom (0 = like the training/validation set).",
    )
    p.add_argument(
        "--calibration-samples", type=int_in(2, 100_000), default=8, help="Posterior draws per calibration phantom."
    )
    p.add_argument(
        "--calibration-families",
        default=None,
        help="Calibrate on anatomical phantom families (comma list of brain, thorax, ellipses; their calibration "
        "seeds, --calibration-phantoms per family) and store Mondrian (per voxel class) quantiles too.",
    )


def _calibrate(args, net, posterior, layout, image, geometric, counts: float) -> dict:
    """``{"conformal_scales": {"0.90": ...}, "calibration": {...}}`` (empty without calibration phantoms)."""
    from petuq_sirf.recon.lowdose import LowDoseConfig, make_low_dose_set
    from petuq_sirf.recon.unrolled import calibrate_unrolled

    if args.calibration_phantoms < 0 or args.calibration_samples < 2:
        raise ValueError("--calibration-phantoms must be >= 0 and --calibration-samples >= 2")
    if not 0 <= args.calibration_lesion_probability <= 1:
        raise ValueError("--calibration-lesion-probability must be in [0, 1]")
    if args.calibration_phantoms == 0:
        return {}
    if getattr(args, "calibration_families", None):
        return _calibrate_families(args, net, posterior, layout, image, geometric, counts)
    cfg = LowDoseConfig(
        args.calibration_phantoms,
        counts,
        lesion_probability=args.calibration_lesion_probability,
        seed=args.seed + 2000,
    )
    data = make_low_dose_set(layout, image, cfg, geometric)
    scales = calibrate_unrolled(net, data, geometric, posterior, args.calibration_samples, seed=args.seed)
    return {
        "conformal_scales": {f"{k:.2f}": v for k, v in scales.items()},
        "calibration": {
            "phantoms": cfg.num_phantoms,
            "true_counts": cfg.true_counts,
            "lesion_probability": cfg.lesion_probability,
            "seed": cfg.seed,
            "samples": args.calibration_samples,
            "mask": "background (body) of each phantom",
        },
    }


def _calibrate_families(args, net, posterior, layout, image, geometric, counts: float) -> dict:
    """Global and Mondrian conformal calibration on anatomical calibration phantoms."""
    from petuq_sirf.recon.family_data import calibrate_unrolled_mondrian, family_low_dose_set
    from petuq_sirf.simulation.phantom_families import FAMILIES

    families = [v.strip() for v in args.calibration_families.split(",") if v.strip()]
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise ValueError(f"unknown phantom families {bad}; choose from {', '.join(FAMILIES)}")
    data = family_low_dose_set(layout, image, families, "calibration", args.calibration_phantoms, counts, geometric)
    mondrian = calibrate_unrolled_mondrian(net, data, geometric, posterior, args.calibration_samples, seed=args.seed)
    scales = {lv: q / gaussian_quantile_of(lv) for lv, q in mondrian.global_quantiles.items()}
    return {
        "conformal_scales": {f"{k:.2f}": v for k, v in scales.items()},
        "mondrian": mondrian.to_dict(),
        "calibration": {
            "families": families,
            "phantoms_per_family": args.calibration_phantoms,
            "split": "calibration",
            "true_counts": counts,
            "samples": args.calibration_samples,
            "mask": "body outline of the predicted mean (voxel classes < num_classes)",
        },
    }


def gaussian_quantile_of(level: float) -> float:
    from petuq_sirf.uq.calibration import gaussian_quantile

    return gaussian_quantile(level)


# ------------------------------------------------------------------------------------------- training
def run_train_unrolled(args: argparse.Namespace) -> int:
    from petuq_sirf.inference.weight_posterior import save_posterior
    from petuq_sirf.recon.lowdose import LowDoseConfig, make_low_dose_set
    from petuq_sirf.recon.unrolled import UnrolledConfig, UnrolledTrainingConfig, train_unrolled
    from petuq_sirf.simulation.simulate import geometric_model

    if args.phantoms < 1 or args.validation_phantoms < 1:
        raise ValueError("--phantoms and --validation-phantoms must be >= 1")
    check_out_dir(args.out)
    device = resolve_device(args.device)
    layout, image = _geometry(args.scanner)
    geometric = geometric_model(layout, image, 4.0, device=device)
    t0 = time.perf_counter()
    train = make_low_dose_set(layout, image, LowDoseConfig(args.phantoms, args.counts, seed=args.seed), geometric)
    val = make_low_dose_set(
        layout, image, LowDoseConfig(args.validation_phantoms, args.counts, seed=args.seed + 1000), geometric
    )
    net_cfg = UnrolledConfig(num_iterations=args.unrolled_iterations, channels=args.channels)
    cfg = UnrolledTrainingConfig(
        num_steps=args.steps,
        head_steps=args.head_steps,
        svi_steps=args.svi_steps if args.posterior == "svi" else 0,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    res = train_unrolled(train, geometric, cfg, net_cfg, validation=val, progress=not args.quiet)
    posterior = res.posterior
    ais_info: dict = {}
    if args.posterior == "ais":
        from dataclasses import replace

        from petuq_sirf.recon.unrolled_ais import UnrolledAISConfig, fit_unrolled_ais

        if args.ais_iterations < 1 or args.ais_draws < 2 or not args.ais_sigma > 0:
            raise ValueError("--ais-iterations must be >= 1, --ais-draws >= 2 and --ais-sigma > 0")
        ais_cfg = UnrolledAISConfig(num_draws=args.ais_draws)
        pmc = replace(
            ais_cfg.pmc,
            iterations=args.ais_iterations,
            sigma_prop=args.ais_sigma,
            init_spread=args.ais_sigma,
            seed=args.seed,
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
                "draws": args.ais_draws,
                "images": ais_cfg.num_images,
            }
        }
        print(f"AIS over {ais.names}: ESS {ais.ess:.2f} of {ais.num_particles} pooled particles")
    calib = _calibrate(args, res.net, posterior, layout, image, geometric, args.counts)
    info = {
        "kind": "unrolled",
        "net_config": net_cfg.to_dict(),
        "scanner": args.scanner,
        "image_shape": list(image.shape),
        "voxel_size_mm": list(image.voxel_size_mm),
        "true_counts": args.counts,
        "psf_fwhm_mm": 4.0,
        "phantoms": args.phantoms,
        "training": vars(cfg),
        "validation_mse": res.val_losses,
        "posterior": args.posterior,
        **ais_info,
        **calib,
        "seconds": time.perf_counter() - t0,
        "command": "petuq train-unrolled " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in _argv(args).items()),
    }
    res.net.cpu()
    path = save_posterior(args.out, res.net, posterior.to("cpu") if posterior else None, {"info": json.dumps(info)})
    print(f"unrolled network written to {path}; validation MSE {res.val_losses[0]:.4g} -> {res.val_losses[-1]:.4g}")
    if calib:
        print("conformal std scales: " + ", ".join(f"{k}: {v:.3f}" for k, v in calib["conformal_scales"].items()))
    return 0


def run_calibrate_unrolled(args: argparse.Namespace) -> int:
    """Add split-conformal scales to an existing unrolled weights file (weights unchanged)."""
    from petuq_sirf.inference.weight_posterior import save_posterior
    from petuq_sirf.simulation.simulate import geometric_model

    if args.calibration_phantoms < 1:
        raise ValueError("--calibration-phantoms must be >= 1")
    check_out_dir(args.out)
    net, posterior, info = load_network("unrolled", args.weights)
    device = resolve_device(args.device)
    layout, image = _geometry(info.get("scanner", "test-2d"))
    geometric = geometric_model(layout, image, info.get("psf_fwhm_mm", 4.0), device=device)
    net.to(device)
    calib = _calibrate(
        args, net, posterior.to(device) if posterior else None, layout, image, geometric, info["true_counts"]
    )
    info.pop("mondrian", None)  # a new calibration replaces an old per-class one
    info.update(calib)
    info["calibration"]["command"] = "petuq calibrate-unrolled " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in _argv(args).items() if v is not None
    )
    net.cpu()
    path = save_posterior(args.out, net, posterior.to("cpu") if posterior else None, {"info": json.dumps(info)})
    print(
        f"conformal std scales written to {path}: "
        + ", ".join(f"{k}: {v:.3f}" for k, v in calib["conformal_scales"].items())
    )
    return 0


def _argv(args: argparse.Namespace) -> dict:
    skip = {"handler", "command", "traceback", "out"}
    return {k: v for k, v in vars(args).items() if k not in skip and not isinstance(v, bool)}


def run_train_denoiser(args: argparse.Namespace) -> int:
    from petuq_sirf.inference.weight_posterior import SVIConfig, save_posterior
    from petuq_sirf.recon.nonexpansive import (
        NonexpansiveDenoiserConfig,
        NonexpansiveTrainingConfig,
        clean_ellipse_images,
        fit_denoiser_posterior,
        jacobian_spectral_norm,
        reflected,
        train_nonexpansive_denoiser,
    )

    check_out_dir(args.out)
    _, image = _geometry(args.scanner)
    t0 = time.perf_counter()
    cfg = NonexpansiveTrainingConfig(
        num_images=args.images,
        num_steps=args.steps,
        noise_std=args.noise_std,
        penalty=args.penalty,
        epsilon=args.epsilon,
        seed=args.seed,
    )
    den_cfg = NonexpansiveDenoiserConfig(spectral_norm=args.spectral_norm)
    res = train_nonexpansive_denoiser(image, cfg, den_cfg, progress=not args.quiet)
    posterior = None
    if args.svi_steps > 0:
        posterior, _ = fit_denoiser_posterior(
            res.denoiser, image, cfg, SVIConfig(num_steps=args.svi_steps, init_scale=1e-3, learn_loc=False)
        )
    test = clean_ellipse_images(image, 8, seed=args.seed + 12345)
    noisy = test + 0.2 * torch.randn(test.shape, generator=torch.Generator().manual_seed(args.seed))
    norm = float(jacobian_spectral_norm(reflected(res.denoiser), noisy, 30).max())
    info = {
        "kind": "pnp-denoiser",
        "net_config": {"channels": den_cfg.channels, "depth": den_cfg.depth, "spectral_norm": den_cfg.spectral_norm},
        "scanner": args.scanner,
        "voxel_size_mm": list(image.voxel_size_mm),
        "training": vars(cfg),
        "jacobian_norm_2D_minus_I_on_test": norm,
        "seconds": time.perf_counter() - t0,
        "command": "petuq train-pnp-denoiser "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in _argv(args).items()),
    }
    path = save_posterior(args.out, res.denoiser, posterior, {"info": json.dumps(info)})
    print(f"denoiser written to {path}; max ||J_(2D-I)|| on 8 noisy test images {norm:.4f}")
    return 0


# ------------------------------------------------------------------------------------- reconstruct
MODEL_SPREAD_ONLY = "model spread only"
SPREAD = {
    "pnp-admm": "model spread only: PnP-ADMM fixed points over denoiser weight draws; the data noise is not "
    "in it (measured std 1-5 % of the error), so these are not error bars",
    "pnp-ula": "posterior (data + prior): PnP-ULA Langevin samples of the Poisson likelihood times the denoiser prior",
    "unrolled": "posterior predictive: weight draws (epistemic) plus the aleatoric head",
}


def run(args: argparse.Namespace) -> int:
    """``petuq reconstruct --method pnp-admm|pnp-ula|unrolled``: mean/std/interval images and metrics.json.

    ``--iterations`` is the number of ADMM iterations for pnp-admm (default 100), the number of
    burn-in Langevin steps per chain for pnp-ula (default 1000), and is ignored by the unrolled
    network (its depth is fixed by training). ``--samples`` posterior draws (pnp-ula: kept states
    over all ``--chains``, every ``--thinning``-th step after the burn-in). The PnP-ADMM spread comes
    from denoiser weight draws only and is labelled "model spread only" in every output.
    """
    from petuq_sirf.backends.registry import acquisition_model_for
    from petuq_sirf.io.image_io import write_image
    from petuq_sirf.recon import osem
    from petuq_sirf.recon.pnp_admm import PnPADMMConfig, pnp_admm_posterior
    from petuq_sirf.recon.unrolled import predict_unrolled
    from petuq_sirf.uq.calibration import evaluate_uq, gaussian_interval
    from petuq_sirf.uq.figures_of_merit import image_metrics
    from petuq_sirf.viz.images import image_panel

    if args.samples < 2:
        raise ValueError("--samples must be >= 2 for an uncertainty estimate")
    if args.iterations < 1:
        raise ValueError("--iterations must be >= 1")
    kind = "pnp-admm" if args.method == "pnp-ula" else args.method
    net, posterior, info = load_network(kind, getattr(args, "weights", None))
    if posterior is None and args.method != "pnp-ula":
        raise ValueError("the weights file has no posterior (trained with --svi-steps 0); cannot sample")
    acq = load_acquisition(args.input)
    check_out_dir(args.out, protect=(args.input,))
    device = resolve_device(args.device)
    model = acquisition_model_for(acq, "embedded", device)
    y = acq.prompts.to(device)
    net.to(device)
    posterior = posterior.to(device) if posterior is not None else None
    trained_voxel = info.get("voxel_size_mm")
    if trained_voxel and [round(v, 3) for v in trained_voxel[1:]] != [round(v, 3) for v in acq.image.voxel_size_mm[1:]]:
        msg = f"the weights were trained on {trained_voxel} mm voxels, the data has {list(acq.image.voxel_size_mm)} mm"
        if not getattr(args, "force", False):
            raise ValueError(msg + " (--force applies them anyway)")
        warnings.warn(msg + " (applied anyway: --force)", stacklevel=1)
    t0 = time.perf_counter()
    extra: dict = {}
    if args.method == "pnp-admm":
        cfg = PnPADMMConfig(num_iterations=args.iterations)
        post = pnp_admm_posterior(
            model, y, net, posterior, args.samples, cfg, progress=not getattr(args, "quiet", False)
        )
        summary = post.summary
        extra = {
            "admm_iterations": cfg.num_iterations,
            "rho_rel": cfg.rho_rel,
            "fixed_point_residual_first": [r[0] for r in post.residuals],
            "fixed_point_residual_last": [r[-1] for r in post.residuals],
            "jacobian_norms_2D_minus_I": post.jacobian_norms,
            "rejected_draws": post.rejected,
        }
    elif args.method == "pnp-ula":
        from petuq_sirf.recon.pnp_ula import PnPULAConfig, body_support, pnp_ula

        chains = getattr(args, "chains", 4)
        thinning = getattr(args, "thinning", 10)
        if chains < 1 or thinning < 1:
            raise ValueError("--chains and --thinning must be >= 1")
        per_chain = -(-args.samples // chains)
        if per_chain < 4:
            raise ValueError(f"--samples {args.samples} gives {per_chain} states per chain; need >= 4 per chain")
        cfg_ula = PnPULAConfig(num_samples=per_chain, burn_in=args.iterations, thinning=thinning, num_chains=chains)
        support = body_support(acq.mu_per_cm) if acq.mu_per_cm is not None else None
        res = pnp_ula(model, y, net, cfg_ula, support=support)
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
        summary = predict_unrolled(net, model, y, x0, posterior, args.samples)
    seconds = time.perf_counter() - t0
    lo, hi = summary.interval(0.9)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spread_only = args.method == "pnp-admm"
    tag = "_model_spread_only" if spread_only else ""
    images = {
        "image": summary.mean,
        "mean": summary.mean,
        f"std{tag}": summary.std,
        f"lower_90{tag}": lo,
        f"upper_90{tag}": hi,
    }
    if not spread_only:
        images["epistemic_std"] = summary.epistemic_std
        images["aleatoric_std"] = summary.aleatoric_std
    scales = conformal_scales_of(info) if args.method == "unrolled" else {}
    for level in (0.9, 0.95):
        if level in scales:  # split-conformal interval mean -/+ scale z std (scales stored with the weights)
            lo_c, hi_c = gaussian_interval(summary.mean, summary.std, level, scales[level])
            images[f"lower_{round(level * 100)}_conformal"] = lo_c.clamp_min(0)
            images[f"upper_{round(level * 100)}_conformal"] = hi_c
    mondrian = mondrian_of(info) if args.method == "unrolled" else None
    if mondrian is not None:  # per-voxel-class conformal interval (classes from the mean image)
        from petuq_sirf.uq.mondrian import voxel_classes

        classes = voxel_classes(summary.mean.cpu(), acq.image.voxel_size_mm, mondrian.spec)
        lo_m, hi_m = mondrian.interval(classes, 0.9, mean=summary.mean.cpu(), std=summary.std.cpu())
        images["lower_90_mondrian"] = lo_m.clamp_min(0).float()
        images["upper_90_mondrian"] = hi_m.float()
    for name, img in images.items():
        write_image(out / f"{name}.nii.gz", img.cpu().numpy(), acq.image)
    metrics = {
        "command": "reconstruct",
        "method": args.method,
        "samples": int(summary.samples.shape[0]),
        "seconds": seconds,
        "weights": info.get("command", ""),
        "spread": SPREAD[args.method],
        **extra,
    }
    if scales:
        metrics["conformal_scales"] = {f"{k:.2f}": v for k, v in scales.items()}
    from petuq_sirf.viz.labels import activity_units, reconstruction_title

    setting = reconstruction_title(args.method, args.iterations if args.method in ("pnp-admm", "pnp-ula") else None)
    setting += f", {summary.samples.shape[0]} samples" + (f" ({MODEL_SPREAD_ONLY})" if spread_only else "")
    std_name = f"posterior std ({MODEL_SPREAD_ONLY})" if spread_only else "posterior std"
    panels = {f"{setting}: posterior mean": summary.mean.cpu(), std_name: summary.std.cpu()}
    if acq.truth is not None:
        truth = acq.truth.cpu()
        mean = summary.mean.cpu()
        metrics["metrics"] = image_metrics(mean, truth, acq.regions, acq.contrast)
        body = acq.regions.get("background")
        uq_key = f"uq_{MODEL_SPREAD_ONLY.replace(' ', '_')}" if spread_only else "uq"
        metrics[uq_key] = evaluate_uq(truth, samples=summary.samples.cpu(), mask=body, regions=acq.regions)
        if scales:
            levels = tuple(sorted(scales))
            mean_c, std_c = summary.mean.cpu(), summary.std.cpu()
            metrics["uq_conformal"] = evaluate_uq(
                truth, mean=mean_c, std=std_c, mask=body, regions=acq.regions, levels=levels, scale=scales
            )
            metrics["coverage_raw_vs_conformal"] = {
                f"{v:.2f}": {
                    "raw": metrics["uq"]["coverage"].get(f"{v:.2f}"),
                    "conformal": metrics["uq_conformal"]["coverage"][f"{v:.2f}"],
                }
                for v in levels
            }
        panels = {"truth": truth, **panels}
    image_panel(
        panels,
        out / "image.png",
        shared_scale=tuple(k for k in panels if "std" not in k),
        units=activity_units(acq.info),
    )
    write_metrics(out, metrics)
    note = f" [std = {MODEL_SPREAD_ONLY}]" if spread_only else ""
    print(f"{args.method}: mean/std/interval images ({summary.samples.shape[0]} samples) written to {out}{note}")
    return 0
