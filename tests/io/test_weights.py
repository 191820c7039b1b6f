"""One weight-file format (folder: model.safetensors + config.json with version and SHA-256) for every network.

The shipped reconstruction networks load; files of the first releases (one .safetensors with the settings in
its metadata) still load and convert to the folder format with identical tensors; damage is refused.
"""

import json

import pytest
import torch
from safetensors.torch import save_file

from petuq_sirf.inference.weight_posterior import convert_weights_file, read_weights
from petuq_sirf.io.weights import WeightsError, load_weights, save_weights
from petuq_sirf.recon.weights import SHIPPED, load_network


@pytest.mark.parametrize("method", sorted(SHIPPED))
def test_shipped_networks_load_and_legacy_files_convert_identically(tmp_path, method):
    net, posterior, info = load_network(method)
    assert info["kind"] in ("unrolled", "pnp-denoiser") and not net.training
    tensors, metadata = read_weights(SHIPPED[method])
    record = json.loads((SHIPPED[method] / "config.json").read_text())
    assert record["format"] == "petuq-network-weights" and record["format_version"] == 1
    assert len(record["sha256"]) == 64 and set(record["tensors"]) == set(tensors)
    # a file as the first releases wrote it: one safetensors, settings in the metadata
    legacy = tmp_path / "legacy.safetensors"
    save_file(tensors, str(legacy), metadata=metadata)
    net_l, post_l, info_l = load_network(method, legacy)
    assert info_l == info
    for a, b in zip(net.state_dict().values(), net_l.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert (posterior is None) == (post_l is None)
    folder = convert_weights_file(legacy, tmp_path / "converted")
    converted, meta_c = read_weights(folder)
    assert meta_c == metadata and set(converted) == set(tensors)
    assert all(torch.equal(converted[k], tensors[k]) for k in tensors)


def test_damaged_or_foreign_weights_are_refused(tmp_path):
    folder = save_weights(tmp_path / "w", {"a": torch.arange(6.0).reshape(2, 3)}, "test-format", 1, {"x": (1, 2)})
    tensors, record = load_weights(folder, "test-format", 1)
    assert torch.equal(tensors["a"], torch.arange(6.0).reshape(2, 3)) and record["x"] == [1, 2]
    with pytest.raises(WeightsError, match="holds 'test-format' weights"):
        load_weights(folder, "petuq-denoiser", 1)
    with pytest.raises(WeightsError, match="version"):
        load_weights(folder, "test-format", 2)
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_weights(folder)
    with pytest.raises(WeightsError, match="is a file"):
        save_weights(folder / "model.safetensors", {}, "test-format", 1, {})
    with pytest.raises(FileNotFoundError, match="not a weights folder"):
        load_weights(tmp_path)
