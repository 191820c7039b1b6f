"""Why the networks trail converged MAP-RDP at full dose on the brain: bias and variance of each estimator.

Calibration-split brain phantoms (seeds from 700, never test seeds), 10⁶ expected trues (100 % dose) on test-2d,
10 Poisson realisations each. Per estimator, over the object: MSE = bias² + variance (pooled over voxels and
phantoms; bias from the mean over the realisations), reported relative to the truth's energy (so that
sqrt(total) is close to the NRMSE). Estimators: fbsem32y and fbsem32w (mean of 4 posterior samples),
MAP-RDP (strength 0.001, up to 200 iterations: the re-tuned setting), OSEM 10 it + 2 mm.
Run: ``PYTHONPATH=$PWD python docs/figures/session7_2026-12-07/full_dose_bias_variance.py``.
"""

import torch

from petuq_sirf.recon import RelativeDifferencePrior, gaussian_postfilter, map_rdp
from petuq_sirf.recon.family_data import family_low_dose_set
from petuq_sirf.recon.reference_tuning import osem_realisations
from petuq_sirf.recon.unrolled import predict_unrolled
from petuq_sirf.recon.weights import load_network
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.simulate import geometric_model

torch.set_num_threads(1)
R = 10
layout = SinogramLayout(get_scanner("test-2d"))
image = ImageGeometry.for_layout(layout)
geo = geometric_model(layout, image, 4.0)
nets = {name: load_network("unrolled", name)[:2] for name in ("fbsem32y", "fbsem32w")}
cal = family_low_dose_set(layout, image, ["brain"], "calibration", 3, 1e6, geo, start=700)
acc: dict[str, list[float]] = {}
for i in range(len(cal)):
    model = geo.with_terms(cal.multiplicative[i], cal.additive[i])
    truth, obj = cal.truth[i], cal.regions[i]["object"]
    g = torch.Generator().manual_seed(1000 + i)
    expected = model.forward(truth)
    ys = torch.poisson(expected.expand(R, *expected.shape).contiguous(), generator=g)
    outs: dict[str, torch.Tensor] = {}
    x0 = osem_realisations(model, ys, 10, 1)
    for name, (net, post) in nets.items():
        outs[name] = torch.stack([predict_unrolled(net, model, ys[r], x0[r], post, 4, seed=r).mean for r in range(R)])
    init = osem_realisations(model, ys, 2, 8)
    maps = []
    for r in range(R):
        prior = RelativeDifferencePrior.scaled_for(model.sensitivity(), init[r], strength=0.001)
        maps.append(map_rdp(model, ys[r], prior, 200, x0=init[r], tolerance=1e-5).image)
    outs["MAP-RDP (0.001, converged)"] = torch.stack(maps)
    outs["OSEM 10 it + 2 mm"] = gaussian_postfilter(osem_realisations(model, ys, 10, 8), 2.0, image.voxel_size_mm)
    energy = float((truth[obj] ** 2).sum())
    for name, x in outs.items():
        x = x.cpu()[:, obj]
        bias2 = float(((x.mean(0) - truth[obj]) ** 2).sum()) / energy
        var = float(x.var(0).sum()) / energy
        a = acc.setdefault(name, [0.0, 0.0])
        a[0] += bias2 / len(cal)
        a[1] += var / len(cal)
print("brain, calibration seeds 700-702, 1e6 trues, 10 realisations; relative to the truth's energy in the object")
for name, (b2, v) in acc.items():
    print(
        f"{name:<28} bias^2 {b2:.4f}  variance {v:.4f}  total {b2 + v:.4f} (sqrt {(b2 + v) ** 0.5:.3f}); bias share {b2 / (b2 + v):.0%}"
    )
