"""The layer contract in pyproject.toml holds, and it catches imports that break it (on a scratch copy)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[2]
LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [sys.executable, "-c", LINT, "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    shutil.copytree(
        ROOT / "petuq_sirf", tree / "petuq_sirf", ignore=shutil.ignore_patterns("__pycache__", "*.safetensors")
    )
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_tree_keeps_every_contract(scratch):
    res = _lint(scratch)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        # a lower layer importing a higher one
        (
            "scanner/layout.py",
            "from petuq_sirf.recon import em as _em",
            "petuq_sirf.scanner is not allowed to import petuq_sirf.recon",
        ),
        # file formats must not know the backends
        (
            "io/interfile.py",
            "import petuq_sirf.backends.embedded",
            "petuq_sirf.io is not allowed to import petuq_sirf.backends",
        ),
        # SIRF outside the backends (inside a function: still an import)
        ("uq/calibration.py", "def _f():\n    import sirf.STIR", "petuq_sirf.uq is not allowed to import sirf"),
        # reconstruction naming a concrete backend
        (
            "recon/rdp.py",
            "from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel",
            "petuq_sirf.recon is not allowed to import petuq_sirf.backends",
        ),
    ],
)
def test_an_upward_import_is_caught(scratch, tmp_path, module, line, expected):
    tree = tmp_path / "tree"
    shutil.copytree(scratch, tree)
    path = tree / "petuq_sirf" / module
    path.write_text(path.read_text() + "\n" + line + "\n")
    res = _lint(tree)
    assert res.returncode != 0
    assert expected in res.stdout, res.stdout
