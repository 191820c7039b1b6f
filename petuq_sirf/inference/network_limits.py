"""Bounds on network sizes, checked when a configuration is built (before any weight is allocated).

A configuration read from a file (a model's ``config.json``, a weights file's metadata) could ask for a
network that exhausts the memory when it is built; every network configuration checks its fields and its
parameter count here first and refuses with one line that names the field.
"""

from __future__ import annotations

MAX_CHANNELS = 1024
MAX_LAYERS = 64
MAX_DILATION = 64
MAX_UNROLLED_ITERATIONS = 100
MAX_PARAMETERS = 20_000_000  # 80 MB of float32 weights: about 100x the largest network shipped here


def check_range(what: str, value: int, lo: int, hi: int) -> None:
    """``ValueError`` unless ``lo <= value <= hi`` (``what`` names the field)."""
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{what} must be an integer in [{lo}, {hi}], got {value!r}")


def conv_stack_parameters(in_channels: int, width: int, depth: int, out_channels: int, kernel: int = 3) -> int:
    """Weights and biases of ``depth`` ``kernel x kernel`` convolutions ``in -> width -> ... -> out``."""
    if depth == 1:
        return (in_channels * kernel * kernel + 1) * out_channels
    first = (in_channels * kernel * kernel + 1) * width
    middle = (depth - 2) * (width * kernel * kernel + 1) * width
    last = (width * kernel * kernel + 1) * out_channels
    return first + middle + last


def check_parameter_count(what: str, count: int, limit: int = MAX_PARAMETERS) -> None:
    """``ValueError`` when a network would have more than ``limit`` parameters."""
    if count > limit:
        raise ValueError(
            f"{what} would have {count:,} parameters, more than the limit of {limit:,}: check the configuration"
        )


__all__ = [
    "MAX_CHANNELS",
    "MAX_DILATION",
    "MAX_LAYERS",
    "MAX_PARAMETERS",
    "MAX_UNROLLED_ITERATIONS",
    "check_parameter_count",
    "check_range",
    "conv_stack_parameters",
]
