"""The layer rule and the import graph: castlab never imports flows / ml_backend / trainers, and no import cycle
exists. Checked on the source (every import, also those inside functions) and by importing every module in a
fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("castlab", "flows", "ml_backend", "trainers")
UPPER = ("flows", "ml_backend", "trainers")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, top_level_only: bool) -> set[str]:
    """Modules `path` imports (absolute and relative), resolved to the longest known module name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _resolve(found: set[str], known: dict[str, Path]) -> set[str]:
    out = set()
    for name in found:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            out.add(name)
    return out


def test_castlab_never_imports_an_upper_layer():
    known = _modules()
    offenders = []
    for name, path in known.items():
        if name.split(".")[0] != "castlab":
            continue
        for target in _resolve(_imports(path, name, top_level_only=False), known):
            if target.split(".")[0] in UPPER:
                offenders.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not offenders, "\n".join(offenders)


def test_no_import_cycle():
    """Not at module level, and not through imports inside functions either (a deferred import that closes a
    cycle hides a dependency knot, such as the old frames <-> frame_pass one)."""
    known = _modules()
    graph = {name: _resolve(_imports(path, name, top_level_only=False), known) - {name}
             for name, path in known.items()}
    cycles, state = [], dict.fromkeys(graph, 0)

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif state[nxt] == 0:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if state[node] == 0:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_module_imports_and_castlab_alone_pulls_in_no_upper_layer():
    modules = [name for name in _modules() if not name.endswith("__main__")]
    castlab = [name for name in modules if name.split(".")[0] == "castlab"]
    script = (
        "import importlib, sys\n"
        f"for name in {castlab!r}: importlib.import_module(name)\n"
        f"upper = sorted(m for m in sys.modules if m.split('.')[0] in {UPPER!r})\n"
        "assert not upper, f'castlab pulled in {upper}'\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
