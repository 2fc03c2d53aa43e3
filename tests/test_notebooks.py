"""The notebooks run end to end on a tiny model (nbclient)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("UNPACT_NB_MODEL", str(tiny_llama_dir))
    monkeypatch.setenv("UNPACT_NB_FORMAT", "plain")
    monkeypatch.setenv("UNPACT_NB_TINY", "1")
    monkeypatch.setenv("UNPACT_NB_PROMPT", "what is the capital of france ?")
    monkeypatch.setenv("UNPACT_NB_ANSWER", "the capital of france is paris")
    monkeypatch.setenv("UNPACT_NB_STEPS", "2")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) or "text/html" in o.get("data", {}) for o in outputs)
