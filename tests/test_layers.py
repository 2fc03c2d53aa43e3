"""The architecture holds: layers import only downward (import-linter), hooks/ imports only errors, modules stay
small, and only the CLI imports inside functions (optional heavy dependencies excepted)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAZY_OK = {"nnsight", "nnsight.modeling.transformers", "datasets", "IPython", "matplotlib_inline.backend_inline",
           "bitsandbytes.functional", "ray", "ray.data"}  # optional or heavy (bitsandbytes: ~5 s), imported where used


def test_import_linter_layers_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "5 kept, 0 broken" in res.stdout


@pytest.mark.parametrize(("file", "line", "contract"), [
    ("scoring.py", "from unpact_mech import findings", "unpact_mech layers"),  # a finding from scoring: upward
    ("core/stats.py", "import unpact_mech.model.subject", "unpact_mech layers"),  # core reaching into model
    ("evals/metrics.py", "import unpact_mech.evals.tasks", "evals inside"),  # upward inside a folder
    ("flat.py", "import unpact_mech.core.errors", "unpact_mech layers"),  # a new module at the root, outside the layers
])
def test_import_linter_fails_on_an_upward_import(tmp_path, file, line, contract):
    """The contracts are not vacuous: each mutation breaks the contract named."""
    pkg = tmp_path / "unpact_mech"
    import shutil

    shutil.copytree(ROOT / "unpact_mech", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    target = pkg / file
    target.write_text((target.read_text() if target.exists() else "") + f"\n{line}  # noqa\n")
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text((ROOT / "pyproject.toml").read_text())
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), str(cfg), "--no-cache"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert res.returncode != 0 and f"{contract} BROKEN" in res.stdout, res.stdout[-2000:]


def _imports(path: Path, inside_functions: bool = False) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] \
        if inside_functions else [tree]
    for scope in scopes:
        for n in ast.walk(scope):
            if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                out.append((n.lineno, n.module))
            elif isinstance(n, ast.Import):
                out += [(n.lineno, a.name) for a in n.names]
    return out


def test_hooks_import_only_errors():
    """hooks/ is installed as unpact_mech.hooks, between the bottom layers and backends."""
    own = {m for _, m in _imports(ROOT / "hooks" / "__init__.py") if m.startswith("unpact_mech")}
    assert own == {"unpact_mech.core.errors"}, own


def test_only_the_cli_imports_inside_functions():
    bad = []
    for f in sorted((ROOT / "unpact_mech").rglob("*.py")):
        if "cli" in f.relative_to(ROOT / "unpact_mech").parts:
            continue
        bad += [f"{f.relative_to(ROOT)}:{line} {m}" for line, m in _imports(f, inside_functions=True)
                if m not in LAZY_OK]
    assert not bad, bad


def test_modules_stay_under_about_400_lines():
    sizes = {str(f.relative_to(ROOT)): len(f.read_text().splitlines())
             for f in [*(ROOT / "unpact_mech").rglob("*.py"), ROOT / "hooks" / "__init__.py"]}
    assert max(sizes.values()) <= 400, sorted(sizes.items(), key=lambda x: -x[1])[:5]


def test_only_the_cli_prints():
    """Outside cli/, the toolkit reports through logging (unpact_mech.core.log), so a caller can silence or route it."""
    bad = []
    for f in sorted([*(ROOT / "unpact_mech").rglob("*.py"), ROOT / "hooks" / "__init__.py"]):
        if f.is_relative_to(ROOT / "unpact_mech" / "cli"):
            continue
        bad += [f"{f.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(ast.parse(f.read_text()))
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"]
    assert not bad, bad
