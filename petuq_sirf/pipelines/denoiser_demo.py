"""The Bayesian-denoiser part of ``petuq demo``: a small preset Pyro BNN trained in about a minute on CPU.

:func:`run_denoiser_demo` trains on random phantoms simulated at the demo's count level (x0.5, x1, x2),
fits split-conformal scales on held-out phantoms, denoises the demo acquisition's OSEM image and returns
its coverage of the truth; it writes the mean / std / interval maps (NIfTI) and a figure.
"""

from __future__ import annotations

import time
from pathlib import Path

from petuq_sirf.bayes.checkpoint import save_denoiser
from petuq_sirf.bayes.denoisers import DenoiserConfig, make_denoiser
from petuq_sirf.bayes.evaluation import conformal_from_dataset
from petuq_sirf.bayes.networks import NetworkConfig
from petuq_sirf.bayes.training_data import DenoisingDataConfig, geometry_for, load_or_generate
from petuq_sirf.recon.em import osem
from petuq_sirf.simulation.simulate import SimulatedAcquisition
from petuq_sirf.uq import calibration as cal
from petuq_sirf.uq.figures_of_merit import nrmse, psnr
from petuq_sirf.viz.uq_figures import calibration_curves, method_panels

PRESET_NETWORK = NetworkConfig(width=16, dilations=(1, 2, 3, 1))


def run_denoiser_demo(
    sim: SimulatedAcquisition,
    out_dir: str | Path,
    seed: int = 0,
    quick: bool = False,
    num_samples: int = 24,
    cache_dir: str | Path | None = None,
) -> dict:
    """Train the preset SVI BNN, denoise ``sim``'s OSEM reconstruction, write maps, return metrics.

    ``sim`` must come from a named scanner with a single-slice image (e.g. ``test-2d``). The training data
    use ``sim``'s true counts as the standard count level. Returns a JSON-ready dict: ``nrmse`` /
    ``nrmse_input``, ``psnr_db``, ``coverage`` and ``coverage_conformal`` (``{"0.90": observed, ...}`` over
    ``truth > 0``), ``calibration_error`` (before / after), per-region coverage at 90 %, times and file paths.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scanner = sim.layout.scanner.name
    try:
        layout, image = geometry_for(scanner)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"the denoiser demo needs a named scanner, got {scanner!r}") from exc
    if layout != sim.layout or tuple(image.shape) != tuple(sim.image.shape) or image.shape[0] != 1:
        raise ValueError("the denoiser demo needs a single-slice acquisition on a named scanner's default grid")
    data_config = DenoisingDataConfig(
        scanner=scanner,
        num_phantoms=5 if quick else 20,
        dose_fractions=(0.5, 1.0, 2.0),
        standard_counts=float(sim.config.true_counts),
        psf_fwhm_mm=float(sim.config.psf_fwhm_mm),
        seed=seed,
    )
    data = load_or_generate(data_config, cache_dir)
    train, calib = data.split_by_phantom(0.2, seed=seed)
    config = DenoiserConfig(
        method="svi",
        network=PRESET_NETWORK,
        epochs=3 if quick else 24,
        batch_size=8,
        lr=5e-3,
        svi_steps=5 if quick else 40,
        svi_lr=2e-3,
        seed=seed,
    )
    model = make_denoiser(config)
    info = model.fit(train, progress=True)
    scales = conformal_from_dataset(model, calib, num_samples, seed)
    acq = sim.acquisition_model()
    noisy = osem(acq, sim.prompts, data_config.osem_iterations, data_config.osem_subsets).image.cpu()
    post = model.predict(noisy, num_samples, seed)
    mean, std = post.predictive_mean, post.total_std  # (z, y, x)
    truth = sim.truth.float()
    mask = truth > 0
    before = cal.coverage_curve(truth, mean=mean, std=std, mask=mask)
    after = cal.coverage_curve(truth, mean=mean, std=std, mask=mask, scale=scales)
    files = {k: str(v) for k, v in post.write(out, sim.image, level=0.9, suffix=".nii.gz").items()}
    save_denoiser(
        model,
        out / "model",
        {"data_config": {**data_config.__dict__}, "conformal_scales": {f"{k:.2f}": v for k, v in scales.items()}},
    )
    files["panel"] = str(
        method_panels(
            {"svi": {"truth": truth, "noisy": noisy, "mean": mean, "std": std}},
            out / "denoiser_panel.png",
            title=f"SVI Bayesian denoiser ({num_samples} posterior samples) on the demo acquisition",
            input_label=f"input: OSEM {data_config.osem_iterations} it \u00d7 {data_config.osem_subsets} subsets",
        )
    )
    files["calibration"] = str(
        calibration_curves(
            {"svi": before, "svi (conformal)": after}, out / "denoiser_calibration.png", title="demo acquisition"
        )
    )
    regions = {}
    for name, region in sim.regions.items():
        region = region.bool() & mask
        if bool(region.any()):
            regions[name] = {
                "coverage_90": cal.coverage_curve(truth, mean=mean, std=std, mask=region, levels=[0.9])[0.9],
                "coverage_90_conformal": cal.coverage_curve(
                    truth, mean=mean, std=std, mask=region, levels=[0.9], scale=scales
                )[0.9],
            }
    return {
        "method": "svi",
        "training_images": len(train),
        "train_time_s": info["train_time_s"],
        "nrmse": nrmse(mean, truth, mask),
        "nrmse_input": nrmse(noisy, truth, mask),
        "psnr_db": psnr(mean, truth, mask),
        "psnr_input_db": psnr(noisy, truth, mask),
        "coverage": {f"{k:.2f}": v for k, v in before.items()},
        "coverage_conformal": {f"{k:.2f}": v for k, v in after.items()},
        "calibration_error": cal.calibration_error(before),
        "calibration_error_conformal": cal.calibration_error(after),
        "crps": cal.crps(truth, mean=mean, std=std, mask=mask),
        "mean_std": float(std[mask].mean()),
        "regions": regions,
        "files": files,
        "runtime_s": time.perf_counter() - start,
        "note": "coverage of one acquisition over the voxels of the object (not the M-realisation protocol: "
        "see petuq evaluate-uq)",
    }


__all__ = ["run_denoiser_demo"]
