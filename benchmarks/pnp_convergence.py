"""Fixed-point residual of PnP-ADMM with the constrained (shipped) vs an unconstrained denoiser.

The unconstrained denoiser is trained with the same settings as the shipped one but ``penalty 0``
(``petuq train-pnp-denoiser --penalty 0 --svi-steps 0``). Writes a log-scale residual plot and
prints the residual ratio first/last and the NRMSE for each, on a held-out low-dose phantom.

    python benchmarks/pnp_convergence.py --out docs/figures/recon_uq
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--steps", type=int, default=400, help="training steps of the unconstrained denoiser")
    p.add_argument("--out", default="docs/figures/recon_uq")
    args = p.parse_args()
    torch.set_num_threads(1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from petuq_sirf.recon.nonexpansive import (
        NonexpansiveTrainingConfig,
        clean_ellipse_images,
        jacobian_spectral_norm,
        reflected,
        train_nonexpansive_denoiser,
    )
    from petuq_sirf.recon.pnp_admm import PnPADMMConfig, pnp_admm
    from petuq_sirf.recon.weights import load_network as load_weights
    from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
    from petuq_sirf.simulation import SimulationConfig, random_ellipses_phantom, simulate
    from petuq_sirf.uq import nrmse

    layout = SinogramLayout(get_scanner("test-2d"))
    image = ImageGeometry.for_layout(layout)
    constrained, _, _ = load_weights("pnp-admm")
    unconstrained = train_nonexpansive_denoiser(
        image, NonexpansiveTrainingConfig(num_images=64, num_steps=args.steps, penalty=0.0)
    ).denoiser
    test = clean_ellipse_images(image, 8, seed=12345)
    noisy = test + 0.2 * torch.randn(test.shape, generator=torch.Generator().manual_seed(0))
    phantom = random_ellipses_phantom(image, np.random.default_rng(99), lesion_probability=1.0)
    sim = simulate(phantom, layout, SimulationConfig(true_counts=5e4, seed=1))
    model = sim.acquisition_model()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    print("| denoiser | max ||J_(2D-I)|| (8 noisy test images) | rho_rel | residual first/last | NRMSE |")
    print("|---|---|---|---|---|")
    for name, net in (("constrained (shipped)", constrained), ("unconstrained", unconstrained)):
        norm = float(jacobian_spectral_norm(reflected(net), noisy, 30).max())
        for rho in (0.3, 1.0):
            with torch.no_grad():
                res = pnp_admm(model, sim.prompts, net, PnPADMMConfig(num_iterations=args.iterations, rho_rel=rho))
            r = np.array(res.residuals)
            ax.semilogy(r, label=f"{name}, rho_rel {rho}")
            print(f"| {name} | {norm:.3f} | {rho} | {r[0] / r[-1]:.3g} | {nrmse(res.image, sim.truth):.3f} |")
    ax.set_xlabel("ADMM iteration")
    ax.set_ylabel("||x_{k+1} - x_k||")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "pnp_residuals.png", dpi=110)
    print(f"figure written to {out / 'pnp_residuals.png'}")


if __name__ == "__main__":
    main()
