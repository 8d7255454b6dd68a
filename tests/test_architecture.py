"""The package's layers point one way (``docs/architecture.md`` is the map this test reads).

- every import under ``pyro_dgm/`` (module level or inside a function) goes to a unit that
  the importer's row of the layer table allows;
- there is no import cycle between modules;
- ``import pyro_dgm.inference`` loads no arviz/matplotlib/pandas, and ``pyro-dgm --help`` /
  ``pyro-dgm compare --help`` load neither torch nor Pyro;
- no module is longer than 400 lines.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pyro_dgm"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer_table() -> tuple[dict[str, str], dict[str, set[str]]]:
    """``(module prefix -> unit, unit -> units it may import)`` from the doc's table."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    prefixes, allowed = {}, {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`pyro_dgm"):
            continue
        unit, modules, may = cells
        for prefix in re.findall(r"`([\w.]+)`", modules):
            prefixes[prefix] = unit
        allowed[unit] = {u.strip() for u in may.split(",") if u.strip()}
    assert allowed, "no layer table found in docs/architecture.md"
    return prefixes, allowed


def _unit(module: str, prefixes: dict[str, str]) -> str | None:
    best = None
    for prefix in prefixes:
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best):
                best = prefix
    return prefixes.get(best) if best else None


def _imports(name: str, path: Path) -> set[str]:
    """Modules of ``pyro_dgm`` that ``name`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from package import submodule`` imports the submodule
            found |= {f"{target}.{a.name}" for a in node.names
                      if f"{target}.{a.name}" in MODULES}
    # a package's ``__init__`` importing its own submodules is no cycle: drop self-edges
    return {m for m in found if (m == "pyro_dgm" or m.startswith("pyro_dgm.")) and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_layer_table_covers_every_module():
    prefixes, _ = _layer_table()
    unmapped = sorted(m for m in MODULES if _unit(m, prefixes) is None)
    assert not unmapped, f"modules in no unit of docs/architecture.md: {unmapped}"


def test_imports_follow_the_layer_table():
    prefixes, allowed = _layer_table()
    bad = []
    for module, targets in GRAPH.items():
        unit = _unit(module, prefixes)
        for target in sorted(targets):
            other = _unit(target, prefixes)
            if other != unit and other not in allowed[unit]:
                bad.append(f"{module} ({unit}) imports {target} ({other})")
    assert not bad, "imports against docs/architecture.md:\n" + "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert not _cycles(GRAPH), f"import cycles: {_cycles(GRAPH)}"


def test_cycle_detection_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_length(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {lines} lines"


def _loaded_after(code: str) -> set[str]:
    marker = "--- modules ---"
    probe = (f"import sys\n{code}\n"
             f"print({marker!r})\n"
             "print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return set(out.stdout.split(marker)[-1].split())


def test_inference_loads_no_arviz_matplotlib_pandas():
    loaded = _loaded_after("import pyro_dgm.inference")
    assert "torch" in loaded  # the probe sees real imports
    assert not loaded & {"arviz", "matplotlib", "pandas"}


@pytest.mark.parametrize("argv", [["--help"], ["compare", "--help"], ["train", "--help"],
                                  ["evaluate", "--help"]])
def test_cli_help_imports_no_torch(argv):
    code = ("from pyro_dgm.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0\n")
    loaded = _loaded_after(code)
    assert "pyro_dgm" in loaded
    assert not loaded & {"torch", "pyro", "arviz"}
