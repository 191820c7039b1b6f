"""Choosing the discrepancy threshold z* of the refinement, on in-family calibration phantoms only.

Calibration seeds from index 700 (no network calibration or reference tuning uses them), thorax, texture and
ellipses (never brain), 3 phantoms each, 3 Poisson realisations, 5e4 / 1e5 / 1e6 expected trues on test-2d.
For each realisation: the network's mean (4 posterior samples), then up to 60 MLEM iterations from it, with
the object NRMSE and the discrepancy z after each. For each candidate z* the image is the first iterate with
z <= z*. Pre-stated rule: the z* with the lowest mean NRMSE averaged over the three doses.
Run: ``PYTHONPATH=$PWD python docs/figures/session8_2026-12-08/discrepancy_threshold_selection.py fbsem32y``.
"""

import sys

import torch

from petuq_sirf.recon.discrepancy import discrepancy_z
from petuq_sirf.recon.em import em_update
from petuq_sirf.recon.family_data import family_low_dose_set, noise_realisations
from petuq_sirf.recon.reference_tuning import osem_realisations
from petuq_sirf.recon.unrolled import predict_unrolled
from petuq_sirf.recon.weights import load_network
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.simulate import geometric_model

torch.set_num_threads(2)
layout = SinogramLayout(get_scanner("test-2d"))
image = ImageGeometry.for_layout(layout)
geo = geometric_model(layout, image, 4.0)
name = sys.argv[1] if len(sys.argv) > 1 else "fbsem32y"
net, post = load_network("unrolled", name)[:2]
R, K, CANDIDATES = 3, 60, (0.0, -1.0, -2.0, -3.0)
families = ["thorax", "texture", "ellipses"]
acc: dict = {}
print(f"{name}: per phantom, mean over {R} realisations")
for counts in (5e4, 1e5, 1e6):
    cal = family_low_dose_set(layout, image, families, "calibration", 3, counts, geo, start=700)
    for i in range(len(cal)):
        model, ys = noise_realisations(cal, geo, i, R, 1000 + i)
        truth, obj = cal.truth[i], cal.regions[i]["object"]
        x0 = osem_realisations(model, ys, 10, 1)
        sens = model.sensitivity()
        rows = []
        for r in range(R):
            x = predict_unrolled(net, model, ys[r], x0[r], post, 4, seed=r).mean
            nrmse, z = [], []
            for _ in range(K + 1):
                nrmse.append(float(torch.linalg.norm((x - truth)[obj]) / torch.linalg.norm(truth[obj])))
                z.append(float(discrepancy_z(ys[r], model.forward(x))))
                x = em_update(model, ys[r], x, sens)
            for zs in CANDIDATES:
                k = next((k for k in range(K + 1) if z[k] <= zs), K)
                acc.setdefault((counts, zs), []).append(nrmse[k])
            acc.setdefault((counts, "none"), []).append(nrmse[0])
            k0 = next((k for k in range(K + 1) if z[k] <= 0), K)
            best = min(range(K + 1), key=nrmse.__getitem__)
            rows.append((nrmse[0], z[0], k0, nrmse[k0], best, nrmse[best], z[best]))
        m = [sum(c) / R for c in zip(*rows)]
        print(
            f"{counts:8.0e} {families[i // 3]:9s} network {m[0]:.3f} z {m[1]:6.2f} | stop at z<=0 after {m[2]:4.1f} it: "
            f"{m[3]:.3f} | best iterate {m[4]:4.1f}: {m[5]:.3f} (z {m[6]:6.2f})",
            flush=True,
        )
print("mean NRMSE per dose and threshold")
for counts in (5e4, 1e5, 1e6):
    print(
        f"{counts:8.0e} "
        + "  ".join(f"{k}: {sum(acc[(counts, k)]) / len(acc[(counts, k)]):.4f}" for k in (*CANDIDATES, "none"))
    )
print("averaged over the doses (the rule)")
for k in (*CANDIDATES, "none"):
    print(f"{k}: {sum(sum(acc[(c, k)]) / len(acc[(c, k)]) for c in (5e4, 1e5, 1e6)) / 3:.4f}")
