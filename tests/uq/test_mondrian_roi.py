"""Mondrian (class-conditional) conformal, CQR and ROI-level conformal (issue 10, items 4 and 5)."""

import pytest
import torch

from petuq_sirf.recon import gaussian_postfilter
from petuq_sirf.scanner import ImageGeometry
from petuq_sirf.simulation.phantom_families import family_phantom, seeds
from petuq_sirf.uq.mondrian import MondrianConformal, VoxelClassSpec, global_conformal, voxel_classes
from petuq_sirf.uq.roi import (
    RoiConformal,
    roi_coverage,
    roi_interval_gaussian,
    roi_mean_gaussian,
    roi_mean_samples,
    roi_summary,
)

IMAGE = ImageGeometry((1, 40, 40), (6.0, 6.0, 6.0))


def _biased_predictions(split: str, num: int, seed: int):
    """Exchangeable (truth, mean, std) triples: a smoothing 'reconstruction' (biased at edges and lesions)
    with noise, and a std that knows only the noise."""
    g = torch.Generator().manual_seed(seed)
    truth, mean, std = [], [], []
    for s in seeds(split, num):
        t = family_phantom("ellipses", IMAGE, s).activity
        m = gaussian_postfilter(t, 12.0, IMAGE.voxel_size_mm) + 0.05 * torch.randn(t.shape, generator=g)
        truth.append(t)
        mean.append(m)
        std.append(torch.full_like(t, 0.05))
    return torch.stack(truth), torch.stack(mean), torch.stack(std)


@pytest.fixture(scope="module")
def data():
    return _biased_predictions("calibration", 30, 0), _biased_predictions("test", 30, 1)


def test_voxel_classes_come_from_the_image_and_mark_the_outside():
    t = family_phantom("ellipses", IMAGE, seeds("test", 1)[0]).activity
    spec = VoxelClassSpec()
    cls = voxel_classes(t, IMAGE.voxel_size_mm, spec)
    assert cls.shape == t.shape and cls.dtype == torch.long
    assert int(cls[0, 0, 0]) == spec.num_classes  # corner: outside the body
    inside = cls[cls < spec.num_classes]
    assert len(torch.unique(inside)) >= 4  # several activity / edge / distance classes occur
    # batched input: each image classified on its own
    both = voxel_classes(torch.stack([t, 2 * t]), IMAGE.voxel_size_mm, spec)
    assert torch.equal(both[0], cls) and torch.equal(both[1], cls)  # relative units: scale invariant


def test_local_contrast_classes_separate_hot_and_cold_spots_from_flat_tissue():
    """A uniform disc with a hot and a cold spot: the spots' centres get the hot / cold contrast bins, flat
    tissue the middle one, also next to the body outline; the other axes are those of the plain classes."""
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    disc = ((yy - 19.5) ** 2 + (xx - 19.5) ** 2 < 17.0**2).double()
    img = disc.clone()
    img[((yy - 12) ** 2 + (xx - 20) ** 2) < 2.5**2] = 4.0  # hot spot, 4:1
    img[((yy - 27) ** 2 + (xx - 20) ** 2) < 2.5**2] = 0.2  # cold spot
    img = img[None]
    spec = VoxelClassSpec(contrast_edges=(0.85, 1.2))
    cls, plain = voxel_classes(img, IMAGE.voxel_size_mm, spec), voxel_classes(img, IMAGE.voxel_size_mm)
    body = plain < VoxelClassSpec().num_classes
    assert torch.equal(cls < spec.num_classes, body)
    assert torch.equal(cls[body] // 3, plain[body])  # contrast refines the plain classes
    k = cls % 3
    assert int(k[0, 12, 20]) == 2 and int(k[0, 27, 20]) == 0
    flat = body[0] & (((yy - 12) ** 2 + (xx - 20) ** 2) > 8**2) & (((yy - 27) ** 2 + (xx - 20) ** 2) > 8**2)
    assert bool((k[0][flat] == 1).all())  # flat tissue, outline included (body-normalised neighbourhood)


def test_disagreement_classes_find_a_lesion_the_reconstruction_smoothed_away():
    """A disc whose hot spot the 'learned' image lost and whose cold spot it filled in; the reference (a
    noisy, unregularised image of the same object) still holds both: the spots get the 'reference higher'
    / 'reference lower' bins, flat tissue 'agrees' despite the noise; without a reference: one-line error."""
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    disc = ((yy - 19.5) ** 2 + (xx - 19.5) ** 2 < 17.0**2).double()
    truth = disc.clone()
    hot = ((yy - 12) ** 2 + (xx - 20) ** 2) < 2.5**2
    cold = ((yy - 27) ** 2 + (xx - 20) ** 2) < 2.5**2
    truth[hot], truth[cold] = 4.0, 0.2
    g = torch.Generator().manual_seed(0)
    reference = (truth + 0.15 * disc * torch.randn(truth.shape, generator=g, dtype=truth.dtype))[None]
    learned = disc[None]  # both spots smoothed away
    spec = VoxelClassSpec(disagreement_edges=(-0.25, 0.25))
    assert spec.needs_reference and not VoxelClassSpec().needs_reference
    cls = voxel_classes(learned, IMAGE.voxel_size_mm, spec, reference=reference)
    plain = voxel_classes(learned, IMAGE.voxel_size_mm)
    body = plain < VoxelClassSpec().num_classes
    assert torch.equal(cls < spec.num_classes, body)
    assert torch.equal(cls[body] // 3, plain[body])  # the disagreement refines the plain classes
    q = cls % 3
    assert int(q[0, 12, 20]) == 2 and int(q[0, 27, 20]) == 0
    far = body[0] & (((yy - 12) ** 2 + (xx - 20) ** 2) > 6**2) & (((yy - 27) ** 2 + (xx - 20) ** 2) > 6**2)
    assert float((q[0][far] == 1).double().mean()) > 0.95  # noise alone rarely leaves the middle bin
    with pytest.raises(ValueError, match="give the reference reconstruction"):
        voxel_classes(learned, IMAGE.voxel_size_mm, spec)
    with pytest.raises(ValueError, match="reference has shape"):
        voxel_classes(learned, IMAGE.voxel_size_mm, spec, reference=reference[0, :20][None])


@pytest.mark.parametrize("score", ["normalised", "cqr"])
def test_mondrian_per_class_coverage_holds_on_exchangeable_held_out_data(data, score):
    (tc, mc, sc), (tt, mt, st) = data
    cc, ct = voxel_classes(mc, IMAGE.voxel_size_mm), voxel_classes(mt, IMAGE.voxel_size_mm)
    body_c, body_t = cc < VoxelClassSpec().num_classes, ct < VoxelClassSpec().num_classes
    levels = (0.5, 0.8, 0.9)
    mond = MondrianConformal(score=score, levels=levels).fit(tc, cc, mean=mc, std=sc, mask=body_c)
    glob = global_conformal(score, levels).fit(tc, cc, mean=mc, std=sc, mask=body_c)
    worst_global = 1.0
    checked = 0
    for c in torch.unique(ct[body_t]).tolist():
        sel = (ct == c) & body_t
        if int(sel.sum()) < 300 or c not in mond.quantiles[0.9]:
            continue
        checked += 1
        cov = mond.coverage(tt, ct, mean=mt, std=st, mask=sel)
        for level in levels:
            assert cov[level] >= level - 0.02, (c, level, cov)
        worst_global = min(worst_global, glob.coverage(tt, ct, mean=mt, std=st, mask=sel, levels=(0.9,))[0.9])
    assert checked >= 3
    assert worst_global < 0.85  # one global factor leaves some class well below 90 %
    assert mond.coverage(tt, ct, mean=mt, std=st, mask=body_t, levels=(0.9,))[0.9] >= 0.88
    # round trip through JSON-ready dicts
    again = MondrianConformal.from_dict(mond.to_dict())
    lo1, hi1 = mond.interval(ct, 0.9, mean=mt, std=st)
    lo2, hi2 = again.interval(ct, 0.9, mean=mt, std=st)
    assert torch.allclose(lo1, lo2) and torch.allclose(hi1, hi2)


def test_mondrian_with_samples_and_unknown_level(data):
    (tc, mc, sc), _ = data
    g = torch.Generator().manual_seed(3)
    samples = mc[None] + sc[None] * torch.randn((16, *mc.shape), generator=g)
    cc = voxel_classes(mc, IMAGE.voxel_size_mm)
    cal = MondrianConformal(score="cqr", levels=(0.9,)).fit(tc, cc, samples=samples)
    lo, hi = cal.interval(cc, 0.9, samples=samples)
    assert lo.shape == mc.shape and bool((hi >= lo).all())
    with pytest.raises(ValueError, match="no conformal quantiles"):
        cal.interval(cc, 0.8, samples=samples)
    with pytest.raises(ValueError, match="unknown conformal score"):
        MondrianConformal(score="absolute")


def test_roi_mean_distributions():
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2:5, 2:5] = True
    samples = torch.randn((50, 3, 1, 8, 8), generator=g) + 2.0
    rs = roi_mean_samples(samples, mask)
    assert rs.shape == (50, 3)
    assert torch.allclose(rs[:, 0], samples[:, 0, 0, 2:5, 2:5].double().mean((-1, -2)))
    mean, std = samples.mean(0), samples.std(0)
    c1, s_corr = roi_mean_gaussian(mean, std, mask, "correlated")
    _, s_ind = roi_mean_gaussian(mean, std, mask, "independent")
    assert bool((s_ind < s_corr).all())  # 9 voxels: independent std ~ mean std / 3
    summary = roi_summary(torch.full((1, 8, 8), 2.0), {"roi": mask}, samples=samples)
    assert set(summary["roi"]["coverage"]) == {"0.50", "0.60", "0.70", "0.80", "0.90", "0.95"}


def test_roi_conformal_coverage_on_exchangeable_rois():
    """ROI means with a size-dependent bias and a too-small std: conformal restores coverage."""
    g = torch.Generator().manual_seed(1)

    def rois(n):
        size = torch.rand(n, generator=g) * 20 + 4  # mm
        truth = 2 + torch.rand(n, generator=g) * 4
        bias = -0.3 * truth * torch.exp(-size / 10)  # small lesions biased low (partial volume)
        centre = truth + bias + 0.1 * torch.randn(n, generator=g)
        spread = torch.full((n,), 0.1)
        groups = ["small" if s < 12 else "large" for s in size.tolist()]
        return truth, centre, spread, groups

    t, c, s, grp = rois(3000)
    cal = RoiConformal(levels=(0.8, 0.9)).fit(t, c, s, grp)
    t2, c2, s2, grp2 = rois(2000)
    raw = roi_coverage(t2, *roi_interval_gaussian(c2, s2, 0.9))
    assert raw < 0.6
    for level in (0.8, 0.9):
        assert roi_coverage(t2, *cal.interval(c2, s2, level)) >= level - 0.02
        lo, hi = cal.interval(c2, s2, level, grp2)
        for name in ("small", "large"):
            sel = torch.tensor([g_ == name for g_ in grp2])
            assert roi_coverage(t2[sel], lo[sel], hi[sel]) >= level - 0.03
    again = RoiConformal.from_dict(cal.to_dict())
    assert again.factor(0.9, "small") == cal.factor(0.9, "small")


def test_equivalent_diameter_of_discs_and_spheres_and_size_grouped_roi_conformal():
    from petuq_sirf.uq.roi import equivalent_diameter_mm, size_group

    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 <= 10.0**2)[None]  # radius 10 voxels of 2 mm: 40 mm
    assert equivalent_diameter_mm(disc, (5.0, 2.0, 2.0)) == pytest.approx(40.0, rel=0.03)
    zz, yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), torch.arange(32.0), indexing="ij")
    ball = (zz - 16) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2 <= 8.0**2  # radius 8 voxels of 1.5 mm: 24 mm
    assert equivalent_diameter_mm(ball, (1.5, 1.5, 1.5)) == pytest.approx(24.0, rel=0.03)
    assert size_group(equivalent_diameter_mm(ball, (1.5, 1.5, 1.5)), (15.0,)) == ">=15mm"
    with pytest.raises(ValueError, match="empty"):
        equivalent_diameter_mm(torch.zeros(1, 4, 4, dtype=torch.bool), (1.0, 1.0, 1.0))
    # size-grouped calibration: small ROIs with 3x the normalised error get their own, larger factor
    g = torch.Generator().manual_seed(0)
    n = 4000
    spread = torch.ones(n)
    small = torch.arange(n) % 2 == 0
    err = torch.randn(n, generator=g) * torch.where(small, 3.0, 1.0)
    groups = ["<15mm" if s else ">=15mm" for s in small.tolist()]
    cal = RoiConformal(levels=(0.9,)).fit(err, torch.zeros(n), spread, groups=groups)
    assert cal.factor(0.9, "<15mm") > 2.5 * cal.factor(0.9, ">=15mm")
    test_err = torch.randn(n, generator=g) * torch.where(small, 3.0, 1.0)
    lo, hi = cal.interval(torch.zeros(n), spread, 0.9, groups=groups)
    for sel in (small, ~small):
        assert roi_coverage_of(test_err[sel], lo[sel], hi[sel]) >= 0.85
    lo_p, hi_p = RoiConformal(levels=(0.9,)).fit(err, torch.zeros(n), spread).interval(torch.zeros(n), spread, 0.9)
    assert roi_coverage_of(test_err[small], lo_p[small], hi_p[small]) < 0.8  # pooled under-covers the small ones


def roi_coverage_of(t, lo, hi) -> float:
    return float(((t >= lo) & (t <= hi)).double().mean())
