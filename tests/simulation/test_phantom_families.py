"""Procedural phantom families (issue 10, item 2): determinism, splits, lesions, ROI masks, mu-maps."""

import math

import numpy as np
import pytest
import torch

from petuq_sirf.scanner import ImageGeometry
from petuq_sirf.simulation.phantom_families import (
    FAMILIES,
    MU_PER_CM,
    OUT_OF_FAMILY,
    SEED_RANGES,
    LesionSpec,
    family_phantom,
    seeds,
    split_of,
)

IMAGE_2D = ImageGeometry((1, 64, 64), (4.0, 3.8, 3.8))
IMAGE_3D = ImageGeometry((9, 40, 40), (4.0, 5.0, 5.0))


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_per_seed_and_different_across_seeds(family):
    s0, s1 = seeds("train", 2)
    a, b, c = (family_phantom(family, IMAGE_2D, s) for s in (s0, s0, s1))
    assert torch.equal(a.activity, b.activity) and torch.equal(a.mu_per_cm, b.mu_per_cm)
    assert a.lesions == b.lesions
    assert not torch.equal(a.activity, c.activity)


def test_seed_ranges_are_disjoint_and_name_the_split():
    ranges = sorted(SEED_RANGES.values())
    assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(ranges, ranges[1:]))
    for split in SEED_RANGES:
        assert {split_of(s) for s in seeds(split, 5)} == {split}
    assert family_phantom("brain", IMAGE_2D, seeds("test", 1)[0]).split == "test"
    assert not set(OUT_OF_FAMILY["in_family"]) & set(OUT_OF_FAMILY["held_out"])
    with pytest.raises(ValueError, match="no split"):
        split_of(-1)


@pytest.mark.parametrize("family", ["brain", "thorax", "texture"])
def test_lesions_have_requested_size_and_contrast_and_masks(family):
    spec = LesionSpec(count=(2, 2), diameter_mm=(12.0, 20.0), contrast=(3.0, 5.0), hot_fraction=0.5)
    found_hot = found_cold = False
    for seed in seeds("calibration", 4):
        ph = family_phantom(family, IMAGE_2D, seed, spec)
        assert len(ph.lesions) == 2
        for i, les in enumerate(ph.lesions):
            assert 12.0 <= les.diameter_mm <= 20.0
            ratio = les.contrast if les.hot else 1 / les.contrast
            assert 3.0 - 1e-9 <= ratio <= 5.0 + 1e-9
            mask = ph.regions[f"lesion_{i}"]
            assert mask.any() and not (mask & ~ph.regions["object"]).any()
            assert ph.contrast[f"lesion_{i}"] == les.contrast
            # the voxels fully inside the lesion hold contrast x the surrounding activity
            z, y, x = ph.image.meshgrid_mm()
            cz, cy, cx = les.centre_mm
            inner = ((y - cy) ** 2 + (x - cx) ** 2).sqrt() < les.diameter_mm / 2 - 3.8
            if inner.any():
                values = ph.activity[inner]
                assert torch.allclose(
                    values, torch.full_like(values, les.contrast * les.background_activity), rtol=1e-4
                )
            found_hot |= les.hot
            found_cold |= not les.hot
        assert torch.equal(ph.regions["lesions"], ph.regions["lesion_0"] | ph.regions["lesion_1"])
    assert found_hot and found_cold


def test_roi_masks_partition_sensibly():
    ph = family_phantom("thorax", IMAGE_2D, seeds("test", 1)[0])
    r = ph.regions
    assert not (r["background"] & (r["edges"] | r["lesions"])).any()
    assert not ((r["edges"] | r["background"] | r["lesions"]) & ~r["object"]).any()
    assert r["background"].sum() > 100 and r["edges"].sum() > 50
    # background voxels see no large jump of the truth to any in-plane neighbour
    a = ph.activity[0]
    bg = r["background"][0]
    jump = (a[1:-1, 1:-1] - a[2:, 1:-1]).abs().maximum((a[1:-1, 1:-1] - a[1:-1, 2:]).abs())
    assert float(jump[bg[1:-1, 1:-1]].max()) < 0.3 * float(a[r["object"][0]].median()) + 1e-6


def test_no_lesions_on_request_and_3d():
    ph = family_phantom("brain", IMAGE_3D, seeds("train", 1)[0], LesionSpec(count=(0, 0)))
    assert ph.lesions == [] and not ph.regions["lesions"].any()
    assert ph.activity.shape == (9, 40, 40)
    assert not torch.equal(ph.activity[0], ph.activity[-1])  # the anatomy changes along z


def test_mu_maps_have_the_right_tissue_values():
    brain = family_phantom("brain", IMAGE_2D, seeds("test", 1)[0], LesionSpec(count=(0, 0)))
    thorax = family_phantom("thorax", IMAGE_3D, seeds("test", 2)[1], LesionSpec(count=(0, 0)))
    for ph in (brain, thorax):
        mu = ph.mu_per_cm
        assert float(mu.min()) >= 0 and float(mu.max()) <= 0.171  # 1/cm, not 1/mm or HU
        assert float(mu[~ph.regions["object"]].max()) < 0.05  # air outside the body (partial volume only)
        values = np.unique(np.round(mu[mu > 0].numpy(), 4))
        assert any(math.isclose(v, MU_PER_CM["soft_tissue"], abs_tol=1e-4) for v in values)
    # skull: bone 0.15-0.17 around the brain
    assert 0.150 <= float(brain.mu_per_cm.max()) <= 0.170
    # thorax: lungs 0.025-0.035 inside the body, bone (spine) 0.15-0.16
    inner = thorax.mu_per_cm[thorax.regions["object"]]
    pure = inner[(inner > 0.02) & (inner < 0.04)]
    assert pure.numel() > 20 and 0.025 <= float(pure.median()) <= 0.035
    assert float(inner.max()) >= 0.15


def test_texture_family_is_heterogeneous_with_edges_and_physical_mu():
    """The generic texture family: several activity levels and many edges inside the body, mu in 1/cm with
    soft tissue everywhere in the body except lung-like and bone parts, both of which occur over seeds."""
    lung = bone = False
    for seed in seeds("train", 8):
        ph = family_phantom("texture", IMAGE_2D, seed, LesionSpec(count=(0, 0)))
        obj = ph.regions["object"]
        act = ph.activity[obj]
        assert float(act.quantile(0.95)) > 2.0 * float(act.quantile(0.05))  # not a uniform body
        assert int(ph.regions["edges"].sum()) > 100
        mu = ph.mu_per_cm
        assert float(mu.min()) >= 0 and float(mu.max()) <= 0.171
        assert float(mu[~obj].max()) < 0.05
        inner = mu[obj]
        assert float((inner - MU_PER_CM["soft_tissue"]).abs().lt(1e-4).float().mean()) > 0.3
        lung |= bool(((inner > 0.024) & (inner < 0.036)).sum() > 20)
        bone |= bool((inner >= 0.15).sum() > 5)
    assert lung and bone
    ph3 = family_phantom("texture", IMAGE_3D, seeds("test", 1)[0])
    assert not torch.equal(ph3.activity[0], ph3.activity[-1])


def test_unknown_family_and_bad_spec_are_clear_errors():
    with pytest.raises(ValueError, match="unknown phantom family"):
        family_phantom("liver", IMAGE_2D, 0)
    with pytest.raises(ValueError, match="contrast"):
        LesionSpec(contrast=(0.5, 2.0))
    with pytest.raises(ValueError, match="cannot take"):
        seeds("train", 10, start=99_995)
