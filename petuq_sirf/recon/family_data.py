"""Low-dose sets from the anatomical phantom families, and Mondrian recalibration of the unrolled network.

:func:`family_low_dose_set` simulates phantoms of :mod:`petuq_sirf.simulation.phantom_families` (one
split's seeds) like :func:`~petuq_sirf.recon.lowdose.make_low_dose_set` does for random ellipses, with
the families' ROI masks as ``regions``. :func:`calibrate_unrolled_classes` fits per-voxel-class
conformal quantiles (:class:`~petuq_sirf.uq.mondrian.MondrianConformal`) of the unrolled network on such a
calibration set (classes from the network's own mean image), and the per-class std factors
(:class:`~petuq_sirf.uq.std_scaling.MondrianStdScaling`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from petuq_sirf.operators.acquisition import AcquisitionModel
from petuq_sirf.recon.lowdose import LowDoseSet, batched_mlem
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout
from petuq_sirf.simulation.phantom_families import family_phantom, seeds
from petuq_sirf.simulation.simulate import SimulationConfig, simulate


def family_low_dose_set(
    layout: SinogramLayout,
    image: ImageGeometry,
    families: Sequence[str],
    split: str,
    num_per_family: int,
    true_counts: float,
    geometric: AcquisitionModel,
    init_iterations: int = 10,
    start: int = 0,
    counts_range: tuple[float, float] | None = None,
) -> LowDoseSet:
    """``num_per_family`` phantoms of each family from ``split``'s seeds (from the ``start``-th), one noise
    realisation each at ``true_counts``; ``init`` = ``init_iterations`` MLEM (the unrolled network's input).

    ``counts_range`` ``(low, high)``: instead, each phantom's expected true counts are drawn log-uniformly
    from that range (deterministically from its seed), for networks trained over a range of doses.
    """
    if counts_range is not None:
        lo, hi = (float(v) for v in counts_range)
        if not 0 < lo <= hi:
            raise ValueError(f"counts range must satisfy 0 < low <= high, got {counts_range}")
    truth, prompts, mult, add, regions = [], [], [], [], []
    for f, family in enumerate(families):
        for s in seeds(split, num_per_family, start):
            ph = family_phantom(family, image, s)
            counts = true_counts
            if counts_range is not None:
                u = float(torch.rand((), generator=torch.Generator().manual_seed(s + 7919 * (f + 1))))
                counts = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
            sim = simulate(ph, layout, SimulationConfig(true_counts=counts, seed=s), model=geometric)
            truth.append(sim.truth)
            prompts.append(sim.prompts.cpu())
            mult.append(sim.multiplicative.cpu())
            add.append(sim.additive.cpu())
            regions.append(sim.regions)
    data = LowDoseSet(
        torch.stack(truth), torch.stack(prompts), torch.stack(mult), torch.stack(add), torch.empty(0), regions
    )
    data.init = batched_mlem(data.model(geometric), data.prompts.to(geometric.device), init_iterations).cpu()
    return data


def noise_realisations(
    data: LowDoseSet, geometric: AcquisitionModel, index: int, num: int, seed: int
) -> tuple[AcquisitionModel, torch.Tensor]:
    """``(model, prompts)`` of phantom ``index`` of ``data``: its acquisition model and ``num`` Poisson realisations
    ``(num, *data_shape)`` of its expected prompts (generator seeded with ``seed``), for repeated-noise studies."""
    model = geometric.with_terms(data.multiplicative[index], data.additive[index])
    expected = model.forward(data.truth[index])
    gen = torch.Generator().manual_seed(seed)
    return model, torch.poisson(expected.expand(num, *expected.shape).contiguous(), generator=gen)


def calibrate_unrolled_classes(
    net,
    data: LowDoseSet,
    geometric: AcquisitionModel,
    posterior=None,
    num_samples: int = 8,
    score: str = "normalised",
    levels: tuple[float, ...] | None = None,
    seed: int = 0,
    refine_threshold: float | None = None,
):
    """``(MondrianConformal, MondrianStdScaling)`` of the unrolled network's (mean, total std) on calibration data:
    per-class interval quantiles, and per-class std factors that make the RMS std equal the RMS error
    (bias included) on the calibration voxels (:class:`~petuq_sirf.uq.std_scaling.MondrianStdScaling`).

    Classes: :func:`~petuq_sirf.uq.mondrian.voxel_classes` of the predicted mean; voxels inside the
    body outline of the prediction are used. ``data`` must not have been used for training. ``refine_threshold``:
    calibrate the discrepancy-refined mean instead (:func:`~petuq_sirf.recon.unrolled.predict_for_calibration`).
    """
    from petuq_sirf.recon.unrolled import predict_for_calibration
    from petuq_sirf.uq.calibration import DEFAULT_LEVELS
    from petuq_sirf.uq.mondrian import MondrianConformal, voxel_classes
    from petuq_sirf.uq.std_scaling import MondrianStdScaling

    pred = predict_for_calibration(net, data, geometric, posterior, num_samples, seed, refine_threshold)
    mean, std = pred.mean.cpu(), pred.std.cpu()
    cal = MondrianConformal(score=score, levels=tuple(levels) if levels else DEFAULT_LEVELS)
    classes = voxel_classes(mean, geometric.voxel_size_mm, cal.spec)
    body = classes < cal.spec.num_classes
    cal.fit(data.truth, classes, mean=mean, std=std, mask=body)
    return cal, MondrianStdScaling().fit(data.truth, classes, mean=mean, std=std, mask=body)
