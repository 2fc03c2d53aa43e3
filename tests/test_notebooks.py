"""The tutorial notebooks: every one executes on a tiny model (nbclient); the committed copies carry outputs
from a real SmolLM2 run within the size budget; result objects display as readable HTML."""

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "scripts" / "run_notebooks.py")
run_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_notebooks)
BUDGET_KB = run_notebooks.BUDGET_KB


def test_six_tutorials():
    assert [p.stem for p in NOTEBOOKS] == ["01_quickstart", "02_keyword_focus", "03_recovery", "04_destruction",
                                           "05_localise_and_patch", "06_your_model"]


@pytest.mark.slow  # a Jupyter kernel each
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_on_tiny_settings(path, tiny_llama_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("UNPACT_NB_MODEL", str(tiny_llama_dir))
    monkeypatch.setenv("UNPACT_NB_FORMAT", "plain")
    monkeypatch.setenv("UNPACT_NB_TINY", "1")
    monkeypatch.setenv("UNPACT_CACHE", str(tmp_path / "cache"))  # the tutorial checkpoint, shared within this run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        c.outputs = [] if c.cell_type == "code" else None
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    cells = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue") if errors else ""
    for c in cells:  # a figure is shown once, never returned and drawn again
        assert sum("image/png" in o.get("data", {}) for o in c.outputs) <= 1, c.source[:80]
    if any("report.figures" in c.source for c in cells):  # ... and shown as an image, not as "<Figure ...>"
        assert any("image/png" in o.get("data", {}) for c in cells for o in c.outputs)
        assert not [o for c in cells for o in c.outputs if "<Figure size" in str(o.get("data", {}).get("text/plain"))
                    and "image/png" not in o.get("data", {})]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_has_outputs_within_budget(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    with_output = [c for c in code if c.get("outputs")]
    assert len(with_output) >= len(code) - 2, f"{path.name}: run scripts/run_notebooks.py to store its outputs"
    assert not [o for c in code for o in c["outputs"] if o.get("output_type") == "error"]
    stderr = [o for c in code for o in c["outputs"] if o.get("name") == "stderr"]
    assert not stderr, f"{path.name}: warnings in the stored outputs: {''.join(stderr[0]['text'])[:200]}"
    assert nb["metadata"]["unpact"]["model"] == "smollm2-135m" and nb["metadata"]["unpact"]["seconds"] > 0
    assert path.stat().st_size / 1024 <= BUDGET_KB["per_notebook"]
    if any("report.figures" in "".join(c["source"]) for c in code):
        assert any("image/png" in o.get("data", {}) for c in code for o in c["outputs"])
    md = [c for c in nb["cells"] if c["cell_type"] == "markdown"]
    assert len(md) >= 3  # a tutorial, not a cell dump


def test_committed_notebooks_total_size():
    assert sum(p.stat().st_size for p in NOTEBOOKS) / 1024 <= BUDGET_KB["total"]
