"""``petuq evaluate-uq``: the frequentist coverage protocol for one or more trained denoisers.

A held-out phantom is simulated ``--realisations`` times at one dose, reconstructed like the training
data and denoised; the coverage of the truth per nominal level and per region, before and after the
model's split-conformal recalibration, goes to ``metrics.json``; panels, calibration curves and
z-score histograms to PNG.
"""

from __future__ import annotations

import argparse

from petuq_sirf.bayes.checkpoint import checkpoint_info, load_denoiser
from petuq_sirf.bayes.evaluation import frequentist_protocol
from petuq_sirf.bayes.training_data import DenoisingDataConfig, geometry_for
from petuq_sirf.cli.common import SAMPLES, SEED, check_out_dir, float_in, int_in, write_metrics
from petuq_sirf.simulation.phantoms import make_phantom
from petuq_sirf.uq import calibration as cal
from petuq_sirf.viz.uq_figures import calibration_curves, method_panels, z_histograms


def register(sub) -> None:
    p = sub.add_parser("evaluate-uq", help="coverage of trained denoisers over noise realisations of a phantom")
    p.add_argument(
        "--model", action="append", required=True, help="Model folder from petuq train-denoiser (repeat for several)."
    )
    p.add_argument("--out", required=True, help="Output folder.")
    p.add_argument("--phantom", default="nema", help="Held-out phantom: nema, brain or ellipses.")
    p.add_argument(
        "--dose",
        type=float_in(0, 1000, lo_open=True),
        default=0.05,
        help="Dose fraction of the model's standard counts.",
    )
    p.add_argument("--realisations", type=int_in(2, 100_000), default=20, help="Noise realisations M.")
    p.add_argument("--samples", type=SAMPLES, default=32, help="Posterior samples per image.")
    p.add_argument("--seed", type=SEED, default=1234, help="Seed of the phantom and the noise realisations.")
    p.set_defaults(handler=run)


def _data_config(folder: str) -> DenoisingDataConfig:
    extra = checkpoint_info(folder).get("extra", {})
    if "data_config" not in extra:
        raise ValueError(f"{folder}: the checkpoint does not record its training data settings")
    d = dict(extra["data_config"])
    d["dose_fractions"] = tuple(d["dose_fractions"])
    return DenoisingDataConfig(**d)


def run(args: argparse.Namespace) -> int:
    if args.realisations < 2:
        raise ValueError(f"--realisations must be >= 2, got {args.realisations}")
    out = check_out_dir(args.out, protect=tuple(args.model))
    results, panels, curves, zs = {}, {}, {}, {}
    for folder in args.model:
        model = load_denoiser(folder)
        data_config = _data_config(folder)
        _, image = geometry_for(data_config.scanner)
        phantom = make_phantom(args.phantom, image, seed=args.seed)
        scales = checkpoint_info(folder)["extra"].get("conformal_scales")
        scales = {float(k): v for k, v in scales.items()} if scales else None
        name = model.config.method
        while name in results:
            name += "'"
        result, maps = frequentist_protocol(
            model, phantom, data_config, args.dose, args.realisations, args.samples, scales, args.seed
        )
        result["model"] = str(folder)
        results[name] = result
        zs[name] = maps.pop("z")
        panels[name] = maps
        curves[name] = result["coverage"]
        if "conformal" in result:
            curves[f"{name} (conformal)"] = result["conformal"]["coverage"]
        print(
            f"{name}: coverage@90 {result['coverage']['0.90']:.3f}"
            + (f" -> {result['conformal']['coverage']['0.90']:.3f} after conformal" if "conformal" in result else "")
            + f", calibration error {result['calibration_error']:.3f}, NRMSE {result['nrmse']:.3f}"
        )
    figures = {
        "z_scores": str(
            z_histograms(zs, out / "z_scores.png", title=f"{args.phantom}, dose {args.dose}, M={args.realisations}")
        ),
        "panels": str(
            method_panels(
                panels,
                out / "uq_panels.png",
                title=f"{args.phantom}, dose {args.dose}, {args.samples} posterior samples",
                input_label="input: OSEM (as in training)",
            )
        ),
        "calibration": str(
            calibration_curves(curves, out / "calibration_curves.png", title=f"{args.phantom}, M={args.realisations}")
        ),
    }
    metrics = {
        "command": "evaluate-uq",
        "phantom": args.phantom,
        "dose_fraction": args.dose,
        "realisations": args.realisations,
        "methods": results,
        "table": cal.coverage_table(results),
        "figures": figures,
    }
    write_metrics(out, metrics)
    print(metrics["table"])
    return 0
