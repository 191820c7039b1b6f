"""Example notebooks run top to bottom in quick mode (their code cells, in order, in one namespace)."""

import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("notebook", sorted(EXAMPLES.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_runs_in_quick_mode(notebook, tmp_path, monkeypatch):
    monkeypatch.setenv("PETUQ_QUICK", "1")
    monkeypatch.setenv("PETUQ_NOTEBOOK_OUT", str(tmp_path))
    cells = json.loads(notebook.read_text())["cells"]
    code = [("".join(c["source"]), i) for i, c in enumerate(cells) if c["cell_type"] == "code"]
    assert code, f"{notebook.name} has no code cells"
    namespace: dict = {"__name__": "__main__"}
    for source, index in code:
        exec(compile(source, f"{notebook.name}[cell {index}]", "exec"), namespace)
    if "curve" in namespace:  # the quick start checks its uncertainty output
        assert all(0.0 <= v <= 1.0 for v in namespace["curve"].values())
        assert float(namespace["std"].max()) > 0
