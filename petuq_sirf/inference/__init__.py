"""Bayesian machinery shared by the denoisers and the reconstruction networks: SVI, PMC adaptive importance
sampling, posterior containers and predictive summaries."""
