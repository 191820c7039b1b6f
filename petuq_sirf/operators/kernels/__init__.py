"""Projector kernels and their selection: ``torch`` (always), ``numba`` (compiled CPU), ``triton`` (CUDA).

Choose with the ``kernel=`` argument of the projectors or the environment variable
``PETUQ_PROJECTOR_KERNEL`` = ``auto`` (default) | ``torch`` | ``numba`` | ``triton``. ``auto`` takes
Triton on CUDA devices when it is installed, numba on the CPU when it is installed, else torch.
A kernel that was asked for but is unavailable falls back to torch with a warning naming both.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings

import torch

KERNELS = ("torch", "numba", "triton")
ENV_VAR = "PETUQ_PROJECTOR_KERNEL"
log = logging.getLogger("petuq_sirf.projector")
_reported: set[tuple[str, str]] = set()


def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def triton_available(device: torch.device) -> bool:
    """Triton runs on CUDA devices, or on the CPU in its interpreter (``TRITON_INTERPRET=1``, tests)."""
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def requested_kernel(kernel: str | None = None) -> str:
    """The kernel asked for (argument, else the environment variable, else ``auto``), validated."""
    name = (kernel or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if name not in (*KERNELS, "auto"):
        raise ValueError(f"projector kernel {name!r} unknown; use one of auto, {', '.join(KERNELS)} ({ENV_VAR})")
    return name


def select_kernel(kernel: str | None = None, device: str | torch.device = "cpu") -> str:
    """The kernel that will run for ``kernel`` (or ``$PETUQ_PROJECTOR_KERNEL``) on ``device``."""
    device = torch.device(device)
    name = requested_kernel(kernel)
    if name == "auto":
        if device.type == "cuda" and triton_available(device):
            return "triton"
        if device.type == "cpu" and numba_available():
            return "numba"
        return "torch"
    if name == "numba" and (device.type != "cpu" or not numba_available()):
        why = "numba is not installed" if numba_available() is False else f"it runs on the CPU, not {device}"
        warnings.warn(f"projector kernel numba unavailable ({why}); using torch", RuntimeWarning, stacklevel=3)
        return "torch"
    if name == "triton" and not triton_available(device):
        why = "triton is not installed" if importlib.util.find_spec("triton") is None else f"no CUDA device ({device})"
        warnings.warn(f"projector kernel triton unavailable ({why}); using torch", RuntimeWarning, stacklevel=3)
        return "torch"
    return name


def num_threads(kernel: str) -> int:
    if kernel == "numba":
        from petuq_sirf.operators.kernels import numba_cpu

        return numba_cpu.num_threads()
    return torch.get_num_threads()


def set_num_threads(n: int) -> None:
    """Threads of torch's intra-op pool and of the numba kernels."""
    torch.set_num_threads(max(1, int(n)))
    if numba_available():
        from petuq_sirf.operators.kernels import numba_cpu

        numba_cpu.set_num_threads(n)


def describe(kernel: str, device: str | torch.device = "cpu") -> str:
    """One line naming the path that runs, e.g. ``projector kernel: numba (CPU, 2 threads)``."""
    device = torch.device(device)
    where = "CUDA" if device.type == "cuda" else ("CPU, Triton interpreter" if kernel == "triton" else "CPU")
    threads = f", {num_threads(kernel)} threads" if device.type == "cpu" else ""
    return f"projector kernel: {kernel} ({where}{threads}; set {ENV_VAR}=auto|torch|numba|triton)"


def report(kernel: str, device: str | torch.device = "cpu") -> str:
    """Log :func:`describe` once per (kernel, device) at INFO level and return it."""
    line = describe(kernel, device)
    key = (kernel, str(device))
    if key not in _reported:
        _reported.add(key)
        log.info(line)
    return line


def help_line() -> str:
    """What ``auto`` picks on this machine, without importing the compiled kernels (for ``--help``)."""
    cpu = "numba" if numba_available() else "torch (numba not installed)"
    gpu = "triton" if importlib.util.find_spec("triton") is not None else "torch (triton not installed)"
    name = requested_kernel() if os.environ.get(ENV_VAR) else "auto"
    return f"projector kernel: {name}; auto = {cpu} on CPU, {gpu} on CUDA ({ENV_VAR}=auto|torch|numba|triton)"
