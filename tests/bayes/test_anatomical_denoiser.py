"""Denoiser pairs from the anatomical families and Mondrian recalibration (issue 10, item 4)."""

import torch

from petuq_sirf.bayes.anatomical import family_pairs, mondrian_for_denoiser
from petuq_sirf.bayes.denoisers import DenoiserConfig, make_denoiser
from petuq_sirf.bayes.networks import NetworkConfig
from petuq_sirf.bayes.training_data import DenoisingDataConfig
from petuq_sirf.uq.mondrian import voxel_classes


def test_family_pairs_and_mondrian_calibration_of_a_denoiser():
    cfg = DenoisingDataConfig(dose_fractions=(0.05, 0.5), osem_iterations=2, osem_subsets=2)
    train = family_pairs(["thorax"], "train", 1, cfg)
    calib = family_pairs(["brain"], "calibration", 1, cfg)
    assert len(train) == 2 and {round(d, 6) for d in train.dose.tolist()} == {0.05, 0.5}
    assert train.mask.any() and not torch.equal(train.noisy[0], calib.noisy[0])
    # the truth scales with the dose (reconstruction units), the OSEM input too
    assert abs(float(train.target[1].sum() / train.target[0].sum()) - 10.0) < 1e-3
    model = make_denoiser(DenoiserConfig(method="mc_dropout", epochs=1, network=NetworkConfig(width=8)))
    model.fit(train)
    cal = mondrian_for_denoiser(model, calib, num_samples=2)
    assert cal.global_quantiles[0.9] > 0 and cal.quantiles[0.9]
    post = model.predict(calib.noisy, 2)
    mean, std = post.predictive_mean[:, None], post.total_std[:, None]
    classes = voxel_classes(mean, calib.voxel_size_mm)
    lo, hi = cal.interval(classes, 0.9, mean=mean, std=std)
    inside = (calib.target[:, None] >= lo) & (calib.target[:, None] <= hi)
    body = classes < cal.spec.num_classes
    assert float(inside[body].double().mean()) >= 0.9  # on its own calibration data
