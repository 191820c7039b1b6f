"""Network building blocks shared by the Bayesian denoisers and the reconstruction networks."""

from petuq_sirf.networks.blocks import conv_stack, heteroscedastic_nll_loss

__all__ = ["conv_stack", "heteroscedastic_nll_loss"]
