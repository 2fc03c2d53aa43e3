"""Regenerate the committed outputs of every tutorial notebook from a real run (SmolLM2 by default).

    python scripts/run_notebooks.py [notebooks/03_recovery.ipynb ...]

Each notebook runs top to bottom in a fresh kernel (progress bars off, so outputs stay small and readable),
its run time is stored in its metadata (``unpact.seconds``), and it is written back atomically only if it ran
without an error and stays within the size budget (``tests/test_notebooks.py`` checks the same budget).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BUDGET_KB = {"per_notebook": 400, "total": 1500}  # committed size, outputs included


def run(path: Path) -> float:
    import nbformat
    from nbclient import NotebookClient

    from unpact_mech.core.io import atomic_write_text

    nb = nbformat.read(path, as_version=4)
    t = time.perf_counter()
    NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = round(time.perf_counter() - t, 1)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    if errors:
        raise SystemExit(f"{path.name}: a cell failed ({errors[0].get('ename')}); nothing written")
    nb.metadata["unpact"] = {"seconds": seconds, "model": os.environ.get("UNPACT_NB_MODEL", "smollm2-135m")}
    text = nbformat.writes(nb)
    kb = len(text.encode()) / 1024
    if kb > BUDGET_KB["per_notebook"]:
        raise SystemExit(f"{path.name}: {kb:.0f} KB with outputs, over the {BUDGET_KB['per_notebook']} KB budget")
    atomic_write_text(path, text)
    print(f"{path.name}: {seconds:.0f} s, {kb:.0f} KB", flush=True)
    return seconds


def main() -> None:
    import importlib.util

    if importlib.util.find_spec("ipywidgets") is None:
        raise SystemExit("install the notebooks extra first (pip install -e '.[notebooks]'): without ipywidgets tqdm "
                         "writes a warning into the stored outputs")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    paths = [Path(p) for p in sys.argv[1:]] or sorted(NOTEBOOKS.glob("*.ipynb"))
    total = sum(run(p) for p in paths)
    size = sum(p.stat().st_size for p in NOTEBOOKS.glob("*.ipynb")) / 1024
    print(f"all: {total:.0f} s; committed size {size:.0f} KB (budget {BUDGET_KB['total']} KB)")
    if size > BUDGET_KB["total"]:
        raise SystemExit("over the total size budget")


if __name__ == "__main__":
    main()
