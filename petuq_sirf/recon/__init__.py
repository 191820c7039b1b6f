"""Classical reconstruction on any acquisition model: MLEM/OSEM, MAP with the RDP."""

from petuq_sirf.recon.em import Reconstruction, em_update, mlem, osem
from petuq_sirf.recon.filters import gaussian_postfilter
from petuq_sirf.recon.likelihood import poisson_gradient_ratio, poisson_log_likelihood
from petuq_sirf.recon.map_rdp import map_objective, map_rdp
from petuq_sirf.recon.rdp import RelativeDifferencePrior

__all__ = [
    "Reconstruction",
    "RelativeDifferencePrior",
    "em_update",
    "gaussian_postfilter",
    "map_objective",
    "map_rdp",
    "mlem",
    "osem",
    "poisson_gradient_ratio",
    "poisson_log_likelihood",
]
