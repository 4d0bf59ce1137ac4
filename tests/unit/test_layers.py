"""The import layers (docs/architecture.md) hold: `lint-imports` keeps every contract of pyproject.toml's
[tool.importlinter], and no module of a product package imports, even through others, a module that imports it.

The cycle check reads every import statement, those inside functions included (grimp parses them all), so an
import moved into a function to dodge a cycle is still one.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("core", "probes", "agent", "collector", "alerts", "cmon")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_the_import_contracts_hold() -> None:
    done = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout, done.stdout


def test_the_contracts_cover_every_package_the_wheel_ships() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = {pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert shipped == set(PRODUCT)
    assert set(project["tool"]["importlinter"]["root_packages"]) == {*PRODUCT, "lab"}


def cycles(graph: grimp.ImportGraph, package: str) -> list[list[str]]:
    """Return the import cycles among `package` and its modules: each a chain that comes back to its start."""
    modules = {package} | graph.find_descendants(package)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & modules) for m in modules}
    found: list[list[str]] = []
    for module in sorted(modules):
        for imported in edges[module]:
            back = [module] if imported == module else graph.find_shortest_chain(importer=imported, imported=module)
            if back and back[-1] == module:
                chain = [module, *back] if imported != module else [module, module]
                if not any(set(chain) == set(other) for other in found):
                    found.append(chain)
    return found


def test_no_import_cycles_inside_any_product_package() -> None:
    graph = grimp.build_graph(*PRODUCT, cache_dir=None)
    found = {package: cycles(graph, package) for package in PRODUCT}
    assert found == {package: [] for package in PRODUCT}


def test_the_cycle_check_sees_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    package = tmp_path / "tangle"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from tangle import b\n")
    (package / "b.py").write_text("def late():\n    from tangle import a  # hidden in a function\n")
    (package / "c.py").write_text("from tangle import a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        graph = grimp.build_graph("tangle", cache_dir=None)
    finally:
        sys.path.remove(str(tmp_path))
    assert cycles(graph, "tangle") == [["tangle.a", "tangle.b", "tangle.a"]]
