"""Which afinar modules may import which: dependencies run export → inference → runs/models/config, never back.

Read from the source (AST), so a lazy import inside a function counts as much as one at the top."""
import ast
from pathlib import Path

import afinar

SRC = Path(afinar.__file__).parent


def afinar_imports(path: Path, root: Path = SRC) -> set[str]:
    """Every afinar module `path` imports, anywhere in the file (relative imports resolved; `root`: afinar's folder)."""
    package = ".".join(("afinar", *path.relative_to(root).with_suffix("").parts))
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from afinar import export`
    return {name for name in found if name == "afinar" or name.startswith("afinar.")}


def test_inference_never_imports_export():
    modules = sorted((SRC / "inference").rglob("*.py"))
    assert len(modules) >= 8  # engines/ is a package
    bad = {str(m.relative_to(SRC)): sorted(n for n in afinar_imports(m) if n.startswith("afinar.export"))
           for m in modules}
    assert {k: v for k, v in bad.items() if v} == {}


def test_sampling_is_a_leaf():
    allowed = {"afinar.errors", "afinar.config"}
    imported = afinar_imports(SRC / "inference" / "sampling.py")
    assert imported <= allowed | {f"{m}.{name}" for m in allowed for name in ("AfinarError", "GenerationSection")}


def test_the_run_folder_layout_imports_nothing_that_uses_it():
    for module in ("runs.py", "extras.py"):
        imported = afinar_imports(SRC / module)
        assert not {n for n in imported if n.startswith(("afinar.train", "afinar.export", "afinar.inference",
                                                          "afinar.evaluate", "afinar.merge"))}, module


def test_the_layering_check_sees_lazy_and_relative_imports(tmp_path):
    (tmp_path / "inference").mkdir()
    sample = tmp_path / "inference" / "x.py"
    sample.write_text("def f():\n    from afinar.export.onnx import QUANTIZED\n    from .. import export\n",
                      encoding="utf-8")
    assert {"afinar.export.onnx", "afinar.export"} <= afinar_imports(sample, tmp_path)


def _import_graph() -> dict[str, set[str]]:
    modules = {".".join(("afinar", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__"): p
               for p in SRC.rglob("*.py")}
    return {name: {m for m in afinar_imports(path) if m in modules and m != name} for name, path in modules.items()}


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_models_and_gguf_import_form_no_cycle():
    """models → gguf_import → tokenizer_files, one way: gguf_import reaches nothing that imports models."""
    graph = _import_graph()
    assert "afinar.gguf_import" in graph["afinar.models"]
    assert not _reaches(graph, "afinar.gguf_import") & {"afinar.models", "afinar.gguf_import", "afinar"}
    assert _reaches(graph, "afinar.tokenizer_files") <= {"afinar.errors", "afinar.atomic"}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that reach each other (Tarjan's strongly connected components of more than one module)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                on_stack.discard(member)
                group.append(member)
            on_stack.discard(node)
            if group:
                groups.append(sorted([node, *group]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycles_between_afinar_modules():
    """Lazy imports included: a cycle hidden inside a function is still a cycle (models ↔ gguf_import was one)."""
    graph = _import_graph()
    known = [["afinar.studio.app", "afinar.studio.launch"]]  # the studio's server and its launcher: not yet split
    assert _cycles(graph) == known
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check sees one
