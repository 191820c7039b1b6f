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


def test_quickstart_uses_only_the_public_api_and_is_committed_executed():
    import re

    import petuq_sirf

    cells = json.loads((EXAMPLES / "quickstart.ipynb").read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "from petuq_sirf" not in code and "import petuq_sirf as pq" in code
    used = set(re.findall(r"\bpq\.(\w+)", code))
    assert used and used <= set(petuq_sirf.__all__), used - set(petuq_sirf.__all__)
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 2, "the committed notebook must carry its executed figures"
    assert not [o for o in outputs if o.get("output_type") == "error"]


def test_every_top_level_name_resolves():
    import petuq_sirf

    for name in petuq_sirf.__all__:
        assert getattr(petuq_sirf, name) is not None, name
