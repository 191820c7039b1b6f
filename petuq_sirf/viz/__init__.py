"""Matplotlib figures (written as PNG; the Agg backend is used, no display needed)."""
