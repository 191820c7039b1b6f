"""Denoiser data from the anatomical phantom families, and Mondrian recalibration of a trained denoiser.

:func:`family_pairs` builds (noisy OSEM, truth) pairs like
:func:`~petuq_sirf.bayes.training_data.generate_pairs` but from
:mod:`petuq_sirf.simulation.phantom_families` seeds of one split (``train`` for training, ``calibration``
for conformal calibration). :func:`mondrian_for_denoiser` fits class-conditional conformal quantiles
(:class:`~petuq_sirf.uq.mondrian.MondrianConformal`, classes from the denoised mean image) on such pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel
from petuq_sirf.bayes.denoisers import Denoiser
from petuq_sirf.bayes.training_data import DenoisingDataConfig, DenoisingDataset, geometry_for
from petuq_sirf.recon.reference_tuning import osem_realisations
from petuq_sirf.simulation.phantom_families import FAMILIES, family_phantom, seeds
from petuq_sirf.simulation.simulate import SimulationConfig, simulate


def family_pairs(
    families: Sequence[str], split: str, num_per_family: int, config: DenoisingDataConfig, start: int = 0
) -> DenoisingDataset:
    """Pairs from ``num_per_family`` phantoms of each family (``split`` seeds), at ``config.dose_fractions``.

    Reconstructed with OSEM ``config.osem_iterations`` x ``config.osem_subsets`` like the training data;
    masks are the phantoms' ``object`` regions; ``phantom`` holds the phantom seed (+ family offset).
    """
    layout, image = geometry_for(config.scanner)
    geometric = EmbeddedAcquisitionModel(layout, image, psf_fwhm_mm=config.psf_fwhm_mm)
    noisy, target, mask, dose, index = [], [], [], [], []
    for family in families:
        for s in seeds(split, num_per_family, start):
            ph = family_phantom(family, image, s)
            for fraction in config.dose_fractions:
                cfg = SimulationConfig(
                    true_counts=fraction * config.standard_counts, psf_fwhm_mm=config.psf_fwhm_mm, seed=s
                )
                sim = simulate(ph, layout, cfg, model=geometric)
                model = geometric.with_terms(multiplicative=sim.multiplicative, additive=sim.additive)
                rec = osem_realisations(model, sim.prompts[None], config.osem_iterations, config.osem_subsets)[0].cpu()
                for z in range(image.shape[0]):
                    noisy.append(rec[z])
                    target.append(sim.truth[z])
                    mask.append(ph.regions["object"][z])
                    dose.append(fraction)
                    index.append(FAMILIES.index(family) * 1_000_000 + s)
    meta = {"families": list(families), "split": split, "num_per_family": num_per_family}
    return DenoisingDataset.from_slices(noisy, target, mask, dose, index, image.voxel_size_mm, meta)


def mondrian_for_denoiser(
    model: Denoiser, calib: DenoisingDataset, num_samples: int = 16, score: str = "normalised", seed: int = 0
):
    """Mondrian conformal quantiles of ``model``'s (mean, total std) on calibration pairs ``calib``.

    Classes from :func:`~petuq_sirf.uq.mondrian.voxel_classes` of the predicted mean (each 2D image on
    its own); the voxels inside the prediction's body outline are used.
    """
    from petuq_sirf.uq.mondrian import MondrianConformal, voxel_classes

    post = model.predict(calib.noisy, num_samples, seed)
    mean = post.predictive_mean[:, None]  # (N, 1, y, x): one-slice images
    std = post.total_std[:, None]
    cal = MondrianConformal(score=score)
    if score == "cqr":
        samples = post.draw(per_sample=1, seed=seed)[:, :, None]
        kw = {"samples": samples}
    else:
        kw = {"mean": mean, "std": std}
    classes = voxel_classes(mean, calib.voxel_size_mm, cal.spec)
    return cal.fit(calib.target[:, None], classes, mask=classes < cal.spec.num_classes, **kw)
