"""Projector kernels (torch ring-shift, numba, Triton interpreter) against the sparse-matrix projector.

The reference is the cached CSR system matrix built from :func:`joseph_coefficients` (the existing
projector). Geometries are tiny so that numba's first compile (cached on disk) and Triton's
interpreter stay cheap.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import numpy as np
import pytest
import torch

from petuq_sirf.operators import RayTracingProjector
from petuq_sirf.operators import kernels as K
from petuq_sirf.operators.listmode import ListModeProjector
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner

HAS_NUMBA = importlib.util.find_spec("numba") is not None
HAS_TRITON = importlib.util.find_spec("triton") is not None
F64 = torch.float64


def _tiny(rings: int, **kw):
    return get_scanner("test-3d").with_(
        name=f"tiny-{rings}", num_rings=rings, detectors_per_ring=24, num_tangential_bins=10, default_bin_size_mm=8.0
    )


def _case(kind: str) -> tuple[SinogramLayout, ImageGeometry, np.ndarray | None]:
    """Every layout kind: 2D, 3D span 1 / 3 / 11, view mashing, no ring-shift symmetry, a view subset."""
    if kind == "2d":
        layout = SinogramLayout(_tiny(1))
        return layout, ImageGeometry((1, 12, 12), (8.0, 8.0, 8.0)), None
    if kind == "span1":
        layout = SinogramLayout(_tiny(4), span=1, max_ring_difference=3)
    elif kind == "span3":
        layout = SinogramLayout(_tiny(4), span=3, max_ring_difference=3)
    elif kind == "span11":
        layout = SinogramLayout(_tiny(8), span=11, max_ring_difference=7)
    elif kind == "mashed":
        layout = SinogramLayout(_tiny(4), span=3, max_ring_difference=2, view_mashing=2)
    elif kind == "no-ring-shift":  # slices of 0.61 x half a ring, shifted grid: fractional axial shifts
        layout = SinogramLayout(_tiny(4), span=3, max_ring_difference=3)
        sc = layout.scanner
        return layout, ImageGeometry((9, 12, 12), (0.61 * sc.ring_spacing_mm, 8.0, 8.0), (1.3, 2.0, -3.0)), None
    elif kind == "views":
        layout = SinogramLayout(_tiny(4), span=3, max_ring_difference=3)
        return layout, ImageGeometry.for_layout(layout, num_xy=12), np.array([0, 3, 4, 9])
    else:
        raise KeyError(kind)
    return layout, ImageGeometry.for_layout(layout, num_xy=12), None


KINDS = ["2d", "span1", "span3", "span11", "mashed", "no-ring-shift", "views"]
CPU_KERNELS = ["torch", pytest.param("numba", marks=pytest.mark.skipif(not HAS_NUMBA, reason="numba missing"))]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _dot(a, b):
    return float((a.double() * b.double()).sum())


def _data(layout, image, views, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    shape = layout.shape if views is None else (layout.num_sinograms, len(views), layout.num_tangential)
    return torch.rand(image.shape, generator=g, dtype=dtype), torch.rand(shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_matches_matrix_projector_and_is_adjoint(kind, kernel):
    layout, image, views = _case(kind)
    x, y = _data(layout, image, views)
    ref = RayTracingProjector(layout, image, views=views, cache=True, dtype=F64)
    proj = RayTracingProjector(layout, image, views=views, cache=False, dtype=F64, kernel=kernel)
    assert proj.kernel == kernel and not proj.cached
    if kind == "no-ring-shift":
        assert "ring-shift" not in proj.path
    elif kernel in ("torch", "numba"):
        assert "ring-shift" in proj.path
    fx, bty = proj.forward(x), proj.adjoint(y)
    assert _rel(fx, ref.forward(x)) <= 1e-5
    assert _rel(bty, ref.adjoint(y)) <= 1e-5
    assert abs(_dot(fx, y) - _dot(x, bty)) <= 1e-12 * abs(_dot(fx, y))


@pytest.mark.parametrize("path", ["matrix", *CPU_KERNELS])
@pytest.mark.parametrize("kind", ["2d", "span3", "span11", "no-ring-shift"])
def test_float32_paths_match_the_float64_reference(kind, path):
    """Every path in float32 samples the same planes as in float64 (45-degree LORs used to flip axis)."""
    layout, image, views = _case(kind)
    x, y = _data(layout, image, views)
    ref = RayTracingProjector(layout, image, views=views, cache=True, dtype=F64)
    kw = {"cache": True} if path == "matrix" else {"cache": False, "kernel": path}
    proj = RayTracingProjector(layout, image, views=views, dtype=torch.float32, **kw)
    assert _rel(proj.forward(x.float()).double(), ref.forward(x)) <= 1e-5
    assert _rel(proj.adjoint(y.float()).double(), ref.adjoint(y)) <= 1e-5


@pytest.mark.skipif(not HAS_NUMBA, reason="numba missing")
def test_numba_float32_and_batches_match_torch():
    layout, image, views = _case("span3")
    x, y = _data(layout, image, views, dtype=torch.float32)
    a = RayTracingProjector(layout, image, cache=False, kernel="numba")
    b = RayTracingProjector(layout, image, cache=False, kernel="torch")
    assert _rel(a.forward(x), b.forward(x)) <= 1e-5
    assert _rel(a.adjoint(y), b.adjoint(y)) <= 1e-5
    xb = torch.stack([x, 2 * x])
    assert torch.allclose(a.forward(xb)[1], 2 * a.forward(x), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not HAS_NUMBA, reason="numba missing")
@pytest.mark.parametrize("kind", ["2d", "span11", "no-ring-shift"])
def test_numba_back_projection_is_identical_for_every_thread_count(kind):
    """Threads own disjoint plane bands: 1 and 2 threads give the same image to the bit, equal to torch."""
    from petuq_sirf.operators.kernels import numba_cpu

    layout, image, views = _case(kind)
    image = ImageGeometry((image.shape[0], 13, 13), image.voxel_size_mm, image.offset_mm)  # odd: uneven bands
    x, y = _data(layout, image, views)
    proj = RayTracingProjector(layout, image, cache=False, kernel="numba", views=views)
    ref = RayTracingProjector(layout, image, cache=False, kernel="torch", views=views).adjoint(y)
    before = torch.get_num_threads()
    try:
        images = []
        for n in sorted({1, min(2, numba_cpu.numba.config.NUMBA_NUM_THREADS)}):
            torch.set_num_threads(n)
            images.append(proj.adjoint(y))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(images[0], im) for im in images[1:])
    assert _rel(images[0], ref) <= 1e-5


@pytest.mark.skipif(not HAS_NUMBA, reason="numba missing")
@pytest.mark.parametrize("kind", ["2d", "span1"])
def test_gradcheck_through_numba_kernels(kind):
    if kind == "2d":
        layout = SinogramLayout(get_scanner("test-2d").with_(detectors_per_ring=16, num_tangential_bins=6))
        image = ImageGeometry((1, 5, 5), (4.0, 30.0, 30.0))
    else:
        sc = _tiny(3).with_(detectors_per_ring=16, num_tangential_bins=6, default_bin_size_mm=12.0)
        layout = SinogramLayout(sc, span=1, max_ring_difference=1)
        image = ImageGeometry((3, 5, 5), (4.0, 20.0, 20.0))
    proj = RayTracingProjector(layout, image, cache=False, dtype=F64, kernel="numba")
    x = torch.rand(image.shape, dtype=F64, requires_grad=True)
    y = torch.rand(layout.shape, dtype=F64, requires_grad=True)
    # fast mode: checks J against random directions (one evaluation per direction, not per entry)
    assert torch.autograd.gradcheck(proj.forward, (x,), fast_mode=True)
    assert torch.autograd.gradcheck(proj.adjoint, (y,), fast_mode=True)


@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("kind", ["2d", "span1", "span11", "no-ring-shift"])
def test_listmode_matches_sinogram_projector(kind, kernel):
    layout, image, _ = _case(kind)
    rng = np.random.default_rng(3)
    n = min(150, layout.num_bins // 2)
    bins = rng.choice(layout.num_bins, n, replace=False)
    w = rng.uniform(0.5, 2.0, n)
    lm = ListModeProjector.from_bins(layout, image, bins, weights=w, dtype=F64, kernel=kernel)
    ref = RayTracingProjector(layout, image, cache=True, dtype=F64)
    x, _ = _data(layout, image, None)
    wt = torch.as_tensor(w)
    assert _rel(lm.forward(x), ref.forward(x).reshape(-1)[bins] * wt) <= 1e-5
    v = torch.rand(n, dtype=F64)
    sino = torch.zeros(layout.num_bins, dtype=F64).index_add_(0, torch.as_tensor(bins), v * wt)
    back = lm.adjoint(v)
    assert _rel(back, ref.adjoint(sino.reshape(layout.shape))) <= 1e-5
    assert abs(_dot(lm.forward(x), v) - _dot(x, back)) <= 1e-12 * abs(_dot(x, back))


@pytest.mark.skipif(not HAS_NUMBA, reason="numba missing")
def test_listmode_gradcheck_numba_and_clear_errors():
    layout, image, _ = _case("span1")
    lm = ListModeProjector.from_bins(layout, image, np.arange(0, layout.num_bins, 37), dtype=F64, kernel="numba")
    small = ImageGeometry((3, 4, 4), (4.0, 24.0, 24.0))
    lm_small = ListModeProjector(small, lm._p_a[:20], lm._p_b[:20], dtype=F64, kernel="numba")
    x = torch.rand(small.shape, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lm_small.forward, (x,))
    assert torch.autograd.gradcheck(lm_small.adjoint, (torch.rand(20, dtype=F64, requires_grad=True),))
    with pytest.raises(ValueError, match="end points must both have shape"):
        ListModeProjector(image, np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="bins must be flat indices"):
        ListModeProjector.from_bins(layout, image, [layout.num_bins])
    with pytest.raises(ValueError, match="LOR values has shape"):
        lm.adjoint(torch.ones(3))


# --- selection and fallback --------------------------------------------------------------------
@pytest.mark.skipif(not HAS_NUMBA, reason="numba missing")
def test_disabled_compiled_kernel_gives_identical_results_and_says_so(monkeypatch, caplog):
    layout, image, _ = _case("span3")
    x, _ = _data(layout, image, None, dtype=torch.float32)
    monkeypatch.delenv(K.ENV_VAR, raising=False)
    auto = RayTracingProjector(layout, image, cache=False)
    assert auto.kernel == "numba" and "numba" in auto.describe()
    monkeypatch.setenv(K.ENV_VAR, "torch")
    K._reported.clear()
    with caplog.at_level(logging.INFO, logger="petuq_sirf.projector"):
        off = RayTracingProjector(layout, image, cache=False)
    assert off.kernel == "torch"
    assert "projector kernel: torch" in caplog.text and "projector kernel: torch" in off.describe()
    assert _rel(off.forward(x), auto.forward(x)) <= 1e-5


def test_unavailable_kernels_fall_back_to_torch_with_a_warning(monkeypatch):
    monkeypatch.delenv(K.ENV_VAR, raising=False)
    monkeypatch.setattr(K, "numba_available", lambda: False)
    assert K.select_kernel(None, "cpu") == "torch"
    with pytest.warns(RuntimeWarning, match="numba unavailable.*using torch"):
        assert K.select_kernel("numba", "cpu") == "torch"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.warns(RuntimeWarning, match="triton unavailable.*using torch"):
        assert K.select_kernel("triton", "cpu") == "torch"
    assert "auto = torch (numba not installed) on CPU" in K.help_line()
    monkeypatch.setenv(K.ENV_VAR, "fortran")
    with pytest.raises(ValueError, match="projector kernel 'fortran' unknown"):
        K.select_kernel(None, "cpu")


def test_cli_help_names_the_projector_kernel(capsys):
    from petuq_sirf.cli.main import build_parser

    assert "projector kernel:" in build_parser().format_help()


# --- Triton through its interpreter (CPU): tiny geometries, the interpreter is slow ------------------
_TRITON_CHILD = "PETUQ_TRITON_INTERPRETER_CHILD"


@pytest.fixture
def triton_interpreter(request):
    """``cuda`` on a GPU; on the CPU the test runs again in a child pytest with ``TRITON_INTERPRET=1``
    set before Triton is imported (``triton.jit`` reads it when it decorates, and anything earlier in
    this process may already have imported Triton in GPU mode), and passes if the child passes."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed (pip install triton)")
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get(_TRITON_CHILD) == "1":
        return "cpu"
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1", _TRITON_CHILD: "1"}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "slow or not slow",
        request.node.nodeid,
    ]
    proc = subprocess.run(cmd, env=env, cwd=request.config.rootpath, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return None


def _triton_check(layout, image, device):
    x, y = _data(layout, image, None)
    ref = RayTracingProjector(layout, image, cache=True, dtype=F64)
    proj = RayTracingProjector(layout, image, cache=False, dtype=F64, kernel="triton", device=device)
    assert proj.kernel == "triton"
    fx, bty = proj.forward(x).cpu(), proj.adjoint(y).cpu()
    assert _rel(fx, ref.forward(x)) <= 1e-5
    assert _rel(bty, ref.adjoint(y)) <= 1e-5
    assert abs(_dot(fx, y) - _dot(x, bty)) <= 1e-12 * abs(_dot(fx, y))


def test_triton_sinogram_kernel_2d(triton_interpreter):
    if triton_interpreter is None:
        return  # checked in the child process (see the fixture)
    sc = get_scanner("test-2d").with_(name="t2", detectors_per_ring=8, num_tangential_bins=4, default_bin_size_mm=20.0)
    layout = SinogramLayout(sc)
    _triton_check(layout, ImageGeometry((1, 6, 6), (4.0, 12.0, 12.0)), triton_interpreter)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["span1", "span11", "no-ring-shift"])
def test_triton_sinogram_kernel_3d(triton_interpreter, kind):
    if triton_interpreter is None:
        return  # checked in the child process (see the fixture)
    sc = get_scanner("test-3d").with_(name="t3", detectors_per_ring=8, num_tangential_bins=4, default_bin_size_mm=20.0)
    if kind == "span1":
        layout, image = SinogramLayout(sc.with_(num_rings=3), span=1, max_ring_difference=1), None
    elif kind == "span11":
        layout, image = SinogramLayout(sc.with_(num_rings=7), span=11, max_ring_difference=6), None
    else:
        layout = SinogramLayout(sc.with_(num_rings=3), span=1, max_ring_difference=1)
        image = ImageGeometry((5, 6, 6), (0.61 * sc.ring_spacing_mm, 12.0, 12.0), (1.3, 2.0, -3.0))
    image = image or ImageGeometry.for_layout(layout, num_xy=6)
    _triton_check(layout, image, triton_interpreter)


def test_triton_listmode_kernel(triton_interpreter):
    if triton_interpreter is None:
        return  # checked in the child process (see the fixture)
    layout, image, _ = _case("span3")
    rng = np.random.default_rng(4)
    bins = rng.choice(layout.num_bins, 40, replace=False)
    w = rng.uniform(0.5, 2.0, 40)
    lm = ListModeProjector.from_bins(layout, image, bins, weights=w, dtype=F64, kernel="triton")
    ref = ListModeProjector.from_bins(layout, image, bins, weights=w, dtype=F64, kernel="torch")
    x, _ = _data(layout, image, None)
    v = torch.rand(40, dtype=F64)
    assert _rel(lm.forward(x), ref.forward(x)) <= 1e-5
    assert _rel(lm.adjoint(v), ref.adjoint(v)) <= 1e-5
