"""The layering of ARCHITECTURE.md, held: every module imports only its own layer or below.

The import graph is read from the source (AST), so a planted upward import fails here
whatever the runtime happens to have loaded. Also held: no function-body import of a
first-party module, no import cycle, every stage module under 300 lines.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("pipeline", "stages", "seeds", "trainer", "tools", "benchmarks", "prompts_templates")

# Lowest first. A module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("pipeline.core", "pipeline", "prompts_templates")),
    ("engines", ("pipeline.engines",)),
    ("sampling", ("pipeline.sampling",)),
    ("data", ("pipeline.data",)),
    ("runner", ("pipeline.runner",)),
    ("seeds", ("seeds",)),
    ("stages", ("stages",)),
    ("trainer", ("trainer",)),
    ("tools", ("tools", "benchmarks")),
    ("entry", ("pipeline.cli", "pipeline.demo", "pipeline.audit", "pipeline.report",
               "pipeline.refresh", "pipeline.refresh_state", "pipeline.__main__")),
]
MAX_STAGE_LINES = 300


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank < 0:
        raise ValueError(f"{module} is in no layer")
    return rank


def _in_function(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return True
    return False


def imports(root: Path) -> list[tuple[str, str, bool, int]]:
    """(importing module, imported first-party module, inside a function?, line) for every
    import statement under the roots; ``from a import b`` names ``a.b`` when b is a module."""
    modules = {module_name(root, p) for r in ROOTS for p in (root / r).rglob("*.py")}
    out = []
    for r in ROOTS:
        for path in sorted((root / r).rglob("*.py")):
            me = module_name(root, path)
            tree = ast.parse(path.read_text(), str(path))
            parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                               else node.module for a in node.names]
                else:
                    continue
                for t in targets:
                    if t.split(".")[0] in ROOTS:
                        out.append((me, t, _in_function(node, parents), node.lineno))
    return out


def upward_imports(root: Path) -> list[str]:
    return [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]}), line {line}"
            for a, b, _, line in imports(root) if layer_of(b) > layer_of(a)]


def cycles(root: Path) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for a, b, _, _ in imports(root):
        if a != b:
            graph.setdefault(a, set()).add(b)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


# --------------------------------------------------------------------------- the tree


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(REPO) == []


def test_no_first_party_import_hides_in_a_function():
    hidden = [f"{a} imports {b} inside a function, line {line}"
              for a, b, inside, line in imports(REPO) if inside]
    assert hidden == []


def test_no_import_cycles():
    assert cycles(REPO) == []


def test_every_module_has_a_layer_and_every_layer_a_module():
    modules = {a for a, _, _, _ in imports(REPO)}
    used = {layer_of(m) for m in modules}
    assert used == set(range(len(LAYERS)))


def test_stage_modules_stay_small():
    big = {str(p.relative_to(REPO)): n for p in (REPO / "stages").rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_STAGE_LINES}
    assert big == {}


def test_the_architecture_page_names_every_package():
    page = (REPO / "ARCHITECTURE.md").read_text()
    packages = {module_name(REPO, p.parent) for r in ROOTS for p in (REPO / r).rglob("__init__.py")}
    missing = sorted(p for p in packages if f"{p.replace('.', '/')}/" not in page)
    assert missing == []


# ------------------------------------------------------------- the checker can fail


@pytest.fixture
def tree_copy(tmp_path):
    for r in ROOTS:
        shutil.copytree(REPO / r, tmp_path / r, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_a_planted_upward_import_is_caught(tree_copy):
    schema = tree_copy / "pipeline" / "core" / "schema.py"
    schema.write_text(schema.read_text() + "\nfrom stages.filter import drop_reasons  # planted\n")
    found = upward_imports(tree_copy)
    assert len(found) == 1 and found[0].startswith("pipeline.core.schema (core) imports "
                                                   "stages.filter (stages)")


def test_a_planted_function_import_and_cycle_are_caught(tree_copy):
    render = tree_copy / "seeds" / "chartworld" / "render.py"
    render.write_text(render.read_text() + "\n\ndef _late():\n    from seeds.chartworld import variants\n")
    hidden = [(a, b) for a, b, inside, _ in imports(tree_copy) if inside]
    assert hidden == [("seeds.chartworld.render", "seeds.chartworld.variants")]
    # variants imports render: the planted import closes a cycle
    assert ["seeds.chartworld.render", "seeds.chartworld.variants"] in cycles(tree_copy)


def test_layer_assignment():
    assert LAYERS[layer_of("pipeline.core.schema")][0] == "core"
    assert LAYERS[layer_of("pipeline.cli")][0] == "entry"
    assert LAYERS[layer_of("pipeline")][0] == "core"
    assert LAYERS[layer_of("stages.rewrite.shard")][0] == "stages"
    with pytest.raises(ValueError, match="no layer"):
        layer_of("tests.fakes")
