"""Bootstrap tests run torch single-threaded: on 2 busy cores that is much faster than 2 threads."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread_torch():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def simulate_and_bootstrap(tmp_path):
    """``(phantom, boot_args, name, extra=()) -> (acquisition folder, run folder)``: ``petuq simulate --phantom
    <phantom> --counts 3e4 --listmode`` into ``tmp_path/<name>``, then ``petuq bootstrap`` with ``boot_args``
    (and ``extra``) into ``tmp_path/boot_<name>``; both commands must succeed."""
    from petuq_sirf.cli.main import main

    def run(phantom: str, boot_args: list[str], name: str, extra: tuple[str, ...] = (), seed: int = 0):
        acq, out = tmp_path / name, tmp_path / f"boot_{name}"
        sim = ["simulate", "--phantom", phantom, "--counts", "3e4", "--listmode", "--seed", str(seed)]
        assert main([*sim, "--out", str(acq)]) == 0
        assert main(["bootstrap", str(acq), *boot_args, *extra, "--out", str(out)]) == 0
        return acq, out

    return run
