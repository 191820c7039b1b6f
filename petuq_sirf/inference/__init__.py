"""Inference machinery shared by the Bayesian denoisers and the reconstruction networks."""
