"""Where does the smoothed disagreement d = S(OSEM - network) / median fall in lesion voxels?

Calibration-split phantoms (seeds from 700, never test seeds), fbsem32w, 5 % and 100 % dose, test-2d.
Run from the repository root: ``PYTHONPATH=$PWD python docs/figures/session7_2026-12-07/disagreement_diagnostic.py``.
"""

import torch

from petuq_sirf.recon import gaussian_postfilter
from petuq_sirf.recon.family_data import family_low_dose_set
from petuq_sirf.recon.reference_tuning import osem_realisations
from petuq_sirf.recon.unrolled import predict_unrolled
from petuq_sirf.recon.weights import load_network
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.simulate import geometric_model
from petuq_sirf.uq.mondrian import VoxelClassSpec

torch.set_num_threads(1)
FWHM_MM = VoxelClassSpec().disagreement_fwhm_mm
layout = SinogramLayout(get_scanner("test-2d"))
image = ImageGeometry.for_layout(layout)
geo = geometric_model(layout, image, 4.0)
net, post, _ = load_network("unrolled", "fbsem32w")
for fam in ("thorax", "brain"):
    for counts in (5e4, 1e6):
        cal = family_low_dose_set(layout, image, [fam], "calibration", 6, counts, geo, start=700)
        mean = predict_unrolled(net, cal.model(geo), cal.prompts, cal.init, post, 4, seed=1).mean.cpu()
        osem = torch.stack(
            [
                osem_realisations(geo.with_terms(cal.multiplicative[i], cal.additive[i]), cal.prompts[i][None], 4, 8)[0]
                for i in range(len(cal))
            ]
        )
        les_d, other_d, err = [], [], []
        for i in range(len(cal)):
            body, les = cal.regions[i]["object"], cal.regions[i]["lesions"]
            med = float(mean[i][body].median())
            d = gaussian_postfilter((osem[i] - mean[i]).double(), FWHM_MM, image.voxel_size_mm) / med
            les_d.append(d[les])
            other_d.append(d[body & ~les])
            err.append(((cal.truth[i] - mean[i]) / med)[les].double())
        d_les, d_other, e = torch.cat(les_d), torch.cat(other_d), torch.cat(err)
        corr = float(torch.corrcoef(torch.stack([d_les, e]))[0, 1])
        print(
            f"{fam} {counts:.0e}: {d_les.numel()} lesion voxels, |d| > 0.25 in {float((d_les.abs() > 0.25).double().mean()):.3f} "
            f"(other body voxels {float((d_other.abs() > 0.25).double().mean()):.3f}); |truth - mean| / median > 0.25 in "
            f"{float((e.abs() > 0.25).double().mean()):.3f}; corr(d, truth - mean) in lesions {corr:.2f}"
        )
