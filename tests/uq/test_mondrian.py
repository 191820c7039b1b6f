"""Voxel-class encoding of ``uq.mondrian``: class index <-> (activity, edge, distance) bins."""

import pytest

from petuq_sirf.uq.mondrian import VoxelClassSpec


def test_class_bins_invert_the_class_index() -> None:
    spec = VoxelClassSpec()
    ng, nd = len(spec.gradient_edges) + 1, len(spec.distance_edges_mm) + 1
    seen = set()
    for c in range(spec.num_classes):
        a, g, d = spec.bins(c)
        assert (a * ng + g) * nd + d == c  # the encoding of voxel_classes
        assert spec.describe(c) == f"activity bin {a}, edge bin {g}, distance bin {d}"
        seen.add((a, g, d))
    assert len(seen) == spec.num_classes
    assert spec.describe(spec.num_classes) == "outside body"
    with pytest.raises(ValueError, match="not a body class"):
        spec.bins(spec.num_classes)


def test_contrast_axis_multiplies_the_classes_and_its_bins_invert() -> None:
    spec = VoxelClassSpec(contrast_edges=(0.85, 1.2))
    plain = VoxelClassSpec()
    assert spec.num_classes == 3 * plain.num_classes
    seen = set()
    for c in range(spec.num_classes):
        key = (*spec.bins(c), spec.contrast_bin(c))
        assert spec.bins(c) == plain.bins(c // 3)  # the contrast bin is the fastest-varying index
        assert spec.describe(c).endswith(f", contrast bin {key[3]}")
        seen.add(key)
    assert len(seen) == spec.num_classes
    with pytest.raises(ValueError, match="contrast_edges must increase"):
        VoxelClassSpec(contrast_edges=(1.2, 0.85))
    assert VoxelClassSpec.from_dict(spec.to_dict()) == spec


def test_contrast_and_disagreement_axes_together_invert() -> None:
    spec = VoxelClassSpec(contrast_edges=(0.85, 1.2), disagreement_edges=(-0.5, -0.25, 0.25))
    plain = VoxelClassSpec()
    assert spec.num_classes == 3 * 4 * plain.num_classes
    seen = set()
    for c in range(spec.num_classes):
        key = (*spec.bins(c), spec.contrast_bin(c), spec.disagreement_bin(c))
        assert spec.bins(c) == plain.bins(c // 12)
        assert c == (c // 12) * 12 + key[3] * 4 + key[4]  # the disagreement bin varies fastest
        assert spec.describe(c).endswith(f", contrast bin {key[3]}, disagreement bin {key[4]}")
        seen.add(key)
    assert len(seen) == spec.num_classes
    assert VoxelClassSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="disagreement_edges must increase"):
        VoxelClassSpec(disagreement_edges=(0.25, -0.25))
