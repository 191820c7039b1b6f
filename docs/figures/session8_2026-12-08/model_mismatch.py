"""The refinement when the reconstruction model is wrong, with and without the model-adequacy guard.

Calibration phantoms only (thorax, texture, ellipses; seeds from index 800; never brain), 2 per family, 2 Poisson
realisations, 5e4 / 1e5 / 1e6 expected trues on test-2d, `fbsem32w`. Data are simulated with the true model and
reconstructed with: the true model; the additive term (scatter + randoms) scaled by 0.8 or 1.2; the
normalisation multiplied by 1 + 3 % or 10 % Gaussian noise per bin. Per case: object NRMSE of the network's mean,
of the refined mean without the guard and with it (`refine_posterior_mean(..., check_model_fit=True)`: no
refinement when an unregularised 20 x 8 OSEM fit leaves z > 0), the fraction the guard skipped, and mean z of
that fit. Run: ``PYTHONPATH=$PWD python docs/figures/session8_2026-12-08/model_mismatch.py`` (the design data
above, ``model_mismatch.txt``). ``... model_mismatch.py brain test 30``: the same on held-out brain phantoms (test
seeds from index 30, in no earlier sample; ``model_mismatch_brain.txt``), measured after the guard was fixed.
"""

import sys

import torch

from petuq_sirf.recon.discrepancy import refine_posterior_mean
from petuq_sirf.recon.family_data import family_low_dose_set, noise_realisations
from petuq_sirf.recon.reference_tuning import osem_realisations
from petuq_sirf.recon.unrolled import predict_unrolled
from petuq_sirf.recon.weights import load_network
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.simulate import geometric_model

torch.set_num_threads(1)
layout = SinogramLayout(get_scanner("test-2d"))
image = ImageGeometry.for_layout(layout)
geo = geometric_model(layout, image, 4.0)
net, post, _ = load_network("unrolled", "fbsem32w")
R = 2
if len(sys.argv) > 1:  # held-out check: FAMILY SPLIT START, 6 phantoms
    FAMILIES, SPLIT, START, PER_FAMILY = [sys.argv[1]], sys.argv[2], int(sys.argv[3]), 6
else:  # the design data
    FAMILIES, SPLIT, START, PER_FAMILY = ["thorax", "texture", "ellipses"], "calibration", 800, 2
CASES = {
    "exact model": (1.0, 0.0),
    "additive x0.8": (0.8, 0.0),
    "additive x1.2": (1.2, 0.0),
    "norm. 3 % noise": (1.0, 0.03),
    "norm. 10 % noise": (1.0, 0.10),
}
print("| trues | model | network | refined, no guard | refined with guard | guard skipped | z of the 20x8 OSEM fit |")
print("|---|---|---|---|---|---|---|")
for counts in (5e4, 1e5, 1e6):
    data = family_low_dose_set(layout, image, FAMILIES, SPLIT, PER_FAMILY, counts, geo, start=START)
    acc: dict = {k: [] for k in CASES}
    for i in range(len(data)):
        _, ys = noise_realisations(data, geo, i, R, 5 + i)  # simulated with the true model
        truth, obj = data.truth[i], data.regions[i]["object"]

        def err(x, truth=truth, obj=obj):
            return float(torch.linalg.norm((x - truth)[obj]) / torch.linalg.norm(truth[obj]))

        for name, (add_scale, norm_noise) in CASES.items():
            g = torch.Generator().manual_seed(99 + i)
            noise = 1 + norm_noise * torch.randn(data.multiplicative[i].shape, generator=g)
            model = geo.with_terms(data.multiplicative[i] * noise.clamp_min(0.5), data.additive[i] * add_scale)
            x0 = osem_realisations(model, ys, 10, 1)
            for r in range(R):
                pred = predict_unrolled(net, model, ys[r], x0[r], post, 4, seed=r)
                plain = refine_posterior_mean(model, ys[r], pred)[0]
                guarded, ref = refine_posterior_mean(model, ys[r], pred, check_model_fit=True)
                acc[name].append(
                    (err(pred.mean), err(plain.mean), err(guarded.mean), float(ref.skipped), float(ref.model_fit_z))
                )
    for name, rows in acc.items():
        m = [sum(c) / len(rows) for c in zip(*rows)]
        print(f"| {counts:.0e} | {name} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} | {m[3]:.2f} | {m[4]:.1f} |", flush=True)
