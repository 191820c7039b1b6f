"""``petuq simulate`` with its default (even, 64 x 64) grid -> ``petuq reconstruct --backend stir|sirf``.

Over the fakes and, where they import, the real libraries; the projector settings are recorded in
``metrics.json`` and are identical on the two external backends.
"""

import json

import pytest

from petuq_sirf.backends.bridge import DEFAULT_RAYS_PER_BIN
from petuq_sirf.cli.main import main


@pytest.fixture(scope="module")
def default_acquisition(tmp_path_factory):
    acq = tmp_path_factory.mktemp("acq")
    assert main(["simulate", "--counts", "1e5", "--out", str(acq)]) == 0
    return acq


def _reconstruct(acq, backend, out):
    argv = ["reconstruct", str(acq), "--backend", backend, "--iterations", "1", "--subsets", "2", "--out", str(out)]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def test_default_simulation_reconstructs_on_stir(stir_impl, default_acquisition, tmp_path):
    metrics = _reconstruct(default_acquisition, "stir", tmp_path / "stir")
    ref = _reconstruct(default_acquisition, "embedded", tmp_path / "emb")
    assert metrics["projector"]["num_tangential_lors"] == DEFAULT_RAYS_PER_BIN
    assert metrics["projector"]["image_exchange"] == "half-voxel"  # 64 x 64
    assert ref["projector"]["backend"] == "embedded"
    assert abs(metrics["metrics"]["nrmse"] - ref["metrics"]["nrmse"]) < 0.1


def test_default_simulation_reconstructs_on_sirf(sirf_impl, default_acquisition, tmp_path):
    metrics = _reconstruct(default_acquisition, "sirf", tmp_path / "sirf")
    assert metrics["projector"]["num_tangential_lors"] == DEFAULT_RAYS_PER_BIN
    # the whole grid, as the embedded model (STIR's grid padded by one voxel so the unrestricted tracer sees it all)
    assert metrics["projector"]["restrict_to_cylindrical_fov"] is False
    assert metrics["projector"]["image_padding_xy"] == 1
    assert 0 < metrics["metrics"]["nrmse"] < 1
