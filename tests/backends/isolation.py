"""Running code against the real SIRF/STIR without risking the pytest process.

A crash inside a C++ library (a segfault) would take the whole test run down. Everything that
touches the real libraries first passes :func:`real_backend_guard`: a smoke run of the adapter
(build, drop the templates, collect, project, back-project, rebuild with new terms) in a child
process. If the child dies on a signal, the tests needing that backend fail with its output
instead of crashing pytest; they run in-process only once the child came back clean.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_MODULES = {"stir": "stir", "sirf": "sirf.STIR"}


def importable(backend: str) -> bool:
    """Whether the real module of ``backend`` (``stir`` or ``sirf``) can be found here (without importing it)."""
    name = _MODULES[backend]
    try:
        return importlib.util.find_spec(name.split(".")[0]) is not None and (
            "." not in name or importlib.util.find_spec(name) is not None
        )
    except (ImportError, ValueError):
        return False


def run_isolated(code: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python with this checkout first on the path; never raises on a crash."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
        env=env,
    )


SMOKE = """
import gc, torch
from petuq_sirf.backends.registry import make_acquisition_model
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
layout = SinogramLayout(get_scanner("test-3d").with_(name="smoke", num_rings=2), span=1, max_ring_difference=1)
image = ImageGeometry((3, {n}, {n}), (2.0, 8.0, 8.0))
model = make_acquisition_model("{backend}", layout, image)
gc.collect()
junk = [bytearray(1 << 20) for _ in range(64)]  # reuse freed memory, as a dangling pointer would see it
y = model.forward(torch.ones(image.shape))
x = model.adjoint(y)
other = model.with_terms(additive=torch.ones(layout.shape))
del model, junk
gc.collect()
z = other.forward(torch.ones(image.shape))
assert torch.isfinite(y).all() and float(y.sum()) > 0 and float(x.sum()) > 0
assert torch.allclose(z, y + 1, rtol=1e-4, atol=1e-3)
print("ok", float(y.sum()))
"""


@functools.cache
def _smoke(backend: str) -> tuple[int, str]:
    outputs = []
    for n in (15, 16):  # odd and even in-plane sizes
        proc = run_isolated(SMOKE.format(backend=backend, n=n))
        outputs.append(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            return proc.returncode, outputs[-1][-3000:]
    return 0, "\n".join(outputs)


def real_backend_guard(backend: str) -> None:
    """Skip when the real ``backend`` is absent; fail (not crash) when its smoke run dies in a child process."""
    if not importable(backend):
        pytest.skip(f"the real {_MODULES[backend]} is not importable here")
    rc, out = _smoke(backend)
    if rc != 0:
        how = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        pytest.fail(f"the {backend} adapter's smoke run in a child process failed ({how}):\n{out}", pytrace=False)
