"""Matplotlib figures written as PNG (Figure objects: no display needed, no global backend switched)."""
