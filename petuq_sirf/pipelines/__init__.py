"""End-to-end runs that compose the layers below: what the CLI commands call.

``acquisition_from_listmode`` (list-mode file -> acquisition with randoms, attenuation, normalisation and
tail-fitted scatter) and ``run_denoiser_demo`` (the Bayesian-denoiser stage of ``petuq demo``).
"""

from petuq_sirf.pipelines.denoiser_demo import run_denoiser_demo
from petuq_sirf.pipelines.listmode import acquisition_from_listmode, tail_fitted_scatter

__all__ = ["acquisition_from_listmode", "run_denoiser_demo", "tail_fitted_scatter"]
