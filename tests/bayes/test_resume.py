"""Epoch checkpoints: an interrupted training run resumes to exactly the weights of an uninterrupted one."""

from __future__ import annotations

import pytest
import torch

from petuq_sirf.bayes import resume
from petuq_sirf.bayes.denoisers import DenoiserConfig, make_denoiser
from petuq_sirf.bayes.networks import NetworkConfig
from petuq_sirf.bayes.training_data import DenoisingDataset


def _data(n: int = 6) -> DenoisingDataset:
    gen = torch.Generator().manual_seed(0)
    target = 1 + torch.rand((n, 16, 16), generator=gen)
    noisy = target + 0.3 * torch.randn((n, 16, 16), generator=gen)
    return DenoisingDataset(noisy, target, target > 0, torch.full((n,), 0.1), torch.arange(n))


@pytest.mark.parametrize("method", ["mc_dropout", "ensemble"])  # dropout uses the global RNG; members one file each
def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch, method):
    config = DenoiserConfig(
        method=method, network=NetworkConfig(width=4, dilations=(1, 2)), epochs=5, batch_size=2, ensemble_size=2
    )
    data = _data()
    straight = make_denoiser(config)
    straight.fit(data)

    original = resume.EpochCheckpoint.save
    calls = []

    def interrupt_at_epoch_3(self, fingerprint, state):
        original(self, fingerprint, state)
        calls.append((self.path.name, state["epoch"]))
        if len(calls) == 3 + (5 if method == "ensemble" else 0):  # ensemble: during the second member
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(resume.EpochCheckpoint, "save", interrupt_at_epoch_3)
        with pytest.raises(KeyboardInterrupt):
            make_denoiser(config).fit(data, checkpoint_dir=tmp_path)
    resumed = make_denoiser(config)
    resumed.fit(data, checkpoint_dir=tmp_path)
    a, b = straight.state_tensors(), resumed.state_tensors()
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # without the checkpoint the interrupted run's partial weights would differ from the final ones
    fresh = make_denoiser(config)
    assert not all(torch.equal(fresh.state_tensors()[k], a[k]) for k in a)


def test_checkpoint_of_other_data_is_refused(tmp_path):
    config = DenoiserConfig(method="cnn", network=NetworkConfig(width=4, dilations=(1,)), epochs=2, batch_size=2)
    make_denoiser(config).fit(_data(), checkpoint_dir=tmp_path)
    other = _data(4)
    with pytest.raises(resume.ResumeError, match="other settings or training data"):
        make_denoiser(config).fit(other, checkpoint_dir=tmp_path)
    (tmp_path / "net.pt").write_bytes(b"garbage")
    with pytest.raises(resume.ResumeError, match="cannot be read"):
        make_denoiser(config).fit(_data(), checkpoint_dir=tmp_path)
