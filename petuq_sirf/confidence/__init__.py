"""Confidence sets whose coverage rests on the Poisson likelihood alone (sequential likelihood mixing over
time frames), ROI-mean bounds over them by a convex solver, and the estimators that make them tight.

This layer sits above ``recon`` and ``bayes`` because any reconstruction method (OSEM, MAP-RDP, the
unrolled network, a Bayesian denoiser) can serve as the predictable estimator.
"""

from petuq_sirf.confidence.roi_solver import SolverConfig, roi_bounds
from petuq_sirf.confidence.sets import confidence_intervals, frame_counts, frame_listmode, scan_time_needed

__all__ = [
    "SolverConfig",
    "confidence_intervals",
    "frame_counts",
    "frame_listmode",
    "roi_bounds",
    "scan_time_needed",
]
