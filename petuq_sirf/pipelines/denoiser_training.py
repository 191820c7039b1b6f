"""Train a Bayesian denoiser on simulated pairs and calibrate it: what ``petuq train-denoiser`` runs.

:func:`train_denoiser_model` simulates (or loads from a cache) the training pairs (OSEM of a low-dose
acquisition, truth) or draws them from anatomical phantom families, trains the denoiser with epoch
checkpoints in ``<model folder>/training_state`` (an interrupted run resumes there), fits split-conformal
scales (and optionally Mondrian quantiles) on held-out phantoms and saves the model folder
(``model.safetensors`` + ``config.json``, :func:`petuq_sirf.bayes.checkpoint.save_denoiser`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from petuq_sirf.bayes.checkpoint import save_denoiser
from petuq_sirf.bayes.denoisers import DenoiserConfig, make_denoiser
from petuq_sirf.bayes.evaluation import conformal_from_dataset, evaluate_on_dataset
from petuq_sirf.bayes.training_data import DenoisingDataConfig, geometry_for, load_or_generate

TRAINING_STATE = "training_state"


def phantom_families(text: str | None) -> list[str]:
    """Family names from a comma list (``brain,thorax``), checked; ``[]`` for none."""
    from petuq_sirf.simulation.phantom_families import check_families

    names = [v.strip() for v in (text or "").split(",") if v.strip()]
    check_families(names)
    return names


def has_interrupted_run(folder: str | os.PathLike) -> bool:
    """Whether the model folder holds the epoch checkpoint of an interrupted training."""
    state = Path(folder) / TRAINING_STATE
    return (state / "net.pt").is_file() or (state / "member0.pt").is_file()


@dataclass
class TrainedDenoiser:
    """The saved model folder, the fitted model, its training record and the calibration-set report."""

    folder: Path
    model: object
    train: dict
    report: dict
    num_training_images: int
    resumed: bool


def train_denoiser_model(
    folder: str | os.PathLike,
    config: DenoiserConfig,
    data_config: DenoisingDataConfig,
    calibration_fraction: float = 0.2,
    families: list[str] | None = None,
    calibration_families: list[str] | None = None,
    calibration_phantoms: int = 8,
    cache: str | os.PathLike | None = None,
    restart: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> TrainedDenoiser:
    """Train ``config``'s denoiser on ``data_config``'s pairs into the model folder ``folder``.

    ``calibration_fraction``: share of the phantoms held out for the split-conformal scales (random
    ellipses); with ``families`` the training pairs come from those families' train seeds (``num_phantoms``
    per family) and the calibration pairs from their calibration seeds. ``calibration_families``: also fit
    Mondrian (per voxel class) quantiles on ``calibration_phantoms`` phantoms per family. ``cache``: folder
    of the simulated pairs (default inside ``folder`` until the training has finished). ``restart``:
    discard the checkpoint of an interrupted run; otherwise an interrupted run resumes from its last epoch.
    """
    if not 0 < calibration_fraction < 1:
        raise ValueError(f"--calibration-fraction must be in (0, 1), got {calibration_fraction}")
    families = list(families or [])
    cal_families = list(calibration_families or [])
    _, image = geometry_for(data_config.scanner)
    out = Path(folder)
    state = out / TRAINING_STATE
    if restart and state.exists():
        shutil.rmtree(state)
    resumed = has_interrupted_run(out)
    if families:
        from petuq_sirf.bayes.anatomical import family_pairs

        train = family_pairs(families, "train", data_config.num_phantoms, data_config)
        calib = family_pairs(families, "calibration", max(2, calibration_phantoms // 2), data_config)
    else:
        data = load_or_generate(data_config, cache or state / "data", progress=progress)
        train, calib = data.split_by_phantom(calibration_fraction, seed=seed)
    model = make_denoiser(config)
    info = model.fit(train, progress=progress, checkpoint_dir=state)
    scales = conformal_from_dataset(model, calib)
    report = evaluate_on_dataset(model, calib)
    extra = {
        "data_config": {**data_config.__dict__, "dose_fractions": list(data_config.dose_fractions)},
        "conformal_scales": {f"{k:.2f}": v for k, v in scales.items()},
        "calibration_phantoms": sorted(set(calib.phantom.tolist())),
        "image_grid": {"shape": list(image.shape), "voxel_size_mm": list(image.voxel_size_mm)},
        "training_families": families or ["random ellipses"],
    }
    if cal_families:
        from petuq_sirf.bayes.anatomical import family_pairs, mondrian_for_denoiser

        mcal = family_pairs(cal_families, "calibration", calibration_phantoms, data_config)
        extra["mondrian"] = mondrian_for_denoiser(model, mcal).to_dict()
        extra["mondrian_calibration"] = {
            "families": cal_families,
            "phantoms_per_family": calibration_phantoms,
            "doses": list(data_config.dose_fractions),
        }
    saved = save_denoiser(model, out, extra)
    shutil.rmtree(state, ignore_errors=True)  # the model is saved: the epoch checkpoints are no longer needed
    return TrainedDenoiser(Path(saved), model, info, report, len(train), resumed)


__all__ = ["TRAINING_STATE", "TrainedDenoiser", "has_interrupted_run", "phantom_families", "train_denoiser_model"]
