"""Shared Bayesian machinery (samplers, posterior summaries, diagnostics)."""
