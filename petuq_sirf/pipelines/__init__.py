"""End-to-end runs that compose the layers below: what the CLI commands call.

* ``reconstruct`` (:mod:`~petuq_sirf.pipelines.reconstruction`): choose and run OSEM / MLEM / MAP-RDP /
  PnP-ADMM / PnP-ULA / the unrolled network from a method name and :class:`ReconstructionSettings`.
* ``train_unrolled_network``, ``calibrate_unrolled_network``, ``train_pnp_denoiser_network``
  (:mod:`~petuq_sirf.pipelines.network_training`): the reconstruction networks on simulated data.
* ``bootstrap_acquisition`` (``petuq bootstrap``: replicates, summaries, bias correction, coverage),
  ``confidence_for_acquisition`` (``petuq confidence``), ``train_denoiser_model`` (``petuq train-denoiser``).
* ``acquisition_from_listmode`` (list-mode file -> acquisition with randoms, attenuation, normalisation and
  tail-fitted scatter), ``run_demo`` (``petuq demo``) and ``run_denoiser_demo`` (its Bayesian-denoiser stage).
"""

from petuq_sirf.pipelines.bootstrap import BootstrapRun, bootstrap_acquisition
from petuq_sirf.pipelines.confidence import ConfidenceRun, confidence_for_acquisition
from petuq_sirf.pipelines.demo import run_demo
from petuq_sirf.pipelines.denoiser_demo import run_denoiser_demo
from petuq_sirf.pipelines.denoiser_training import TrainedDenoiser, train_denoiser_model
from petuq_sirf.pipelines.listmode import acquisition_from_listmode, tail_fitted_scatter
from petuq_sirf.pipelines.network_training import (
    CalibrationSettings,
    PnPDenoiserTrainingSettings,
    TrainedNetwork,
    UnrolledTrainingSettings,
    calibrate_unrolled_network,
    train_pnp_denoiser_network,
    train_unrolled_network,
)
from petuq_sirf.pipelines.reconstruction import (
    METHODS,
    ReconstructionResult,
    ReconstructionSettings,
    load_method_network,
    reconstruct,
)

__all__ = [
    "METHODS",
    "BootstrapRun",
    "ConfidenceRun",
    "TrainedDenoiser",
    "bootstrap_acquisition",
    "confidence_for_acquisition",
    "train_denoiser_model",
    "CalibrationSettings",
    "PnPDenoiserTrainingSettings",
    "ReconstructionResult",
    "ReconstructionSettings",
    "TrainedNetwork",
    "UnrolledTrainingSettings",
    "acquisition_from_listmode",
    "calibrate_unrolled_network",
    "load_method_network",
    "reconstruct",
    "run_demo",
    "run_denoiser_demo",
    "tail_fitted_scatter",
    "train_pnp_denoiser_network",
    "train_unrolled_network",
]
