"""The package's shape: no import cycles (lazy imports inside functions included), a core that knows no
family, entry points that reach families only through the registry, and no benchmark code or docs
writing inside the installed package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "zoo"
FAMILIES = ("gpt", "events", "tft")
# Every `python -m zoo.<command>`: each top-level module but the package's and the built-in family table.
ENTRY_POINTS = tuple(sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "families")))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "conf" not in p.relative_to(PACKAGE).parts}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every zoo module `path` imports, at the top or inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import zoo.gpt.model as m` -> zoo.gpt.model
                target = target.rpartition(".")[0]
            if target.startswith("zoo") and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_import_graph_has_no_cycles_lazy_imports_included():
    edges = graph()
    assert "zoo.core.family" in edges and edges["zoo.tft.module"], "the graph reads the package"
    assert cycles(edges) == []


def test_core_knows_no_family():
    for name, deps in graph().items():
        if name.startswith("zoo.core"):
            bad = sorted(d for d in deps if d.split(".")[1:2] and d.split(".")[1] in FAMILIES)
            assert not bad, f"{name} imports {bad}"


def test_every_command_is_an_entry_point():
    assert {"train", "eval", "predict", "generate", "export", "monitor", "collect"} <= set(ENTRY_POINTS)


def family_names_in_code(path: Path) -> list[str]:
    """Family names in `path`'s code: names and string constants other than docstrings (prose may say which
    family does what; code that branches on, or keys by, a family name may not)."""
    word = re.compile(r"\b(" + "|".join(FAMILIES) + r")\b", re.IGNORECASE)
    tree = ast.parse(path.read_text())
    prose = {
        id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            text = node.value
        elif isinstance(node, ast.Name | ast.Attribute | ast.arg):
            text = getattr(node, "id", None) or getattr(node, "attr", None) or node.arg
        else:
            continue
        if word.search(text):
            found.append(f"line {node.lineno}: {text[:80]!r}")
    return found


def test_the_family_name_finder_finds_one(tmp_path):
    code = tmp_path / "m.py"
    code.write_text('"""Any family: gpt, tft."""\nTABLE = {"gpt": 1}\nif run.family == "TFT":\n    pass\n')
    assert family_names_in_code(code) == ["line 2: 'gpt'", "line 3: 'TFT'"]


@pytest.mark.parametrize("where", ["core", *ENTRY_POINTS])
def test_no_family_name_in_the_core_or_an_entry_point(where):
    paths = sorted((PACKAGE / "core").glob("*.py")) if where == "core" else [PACKAGE / f"{where}.py"]
    found = {str(p.relative_to(SRC)): family_names_in_code(p) for p in paths}
    assert not any(found.values()), {k: v for k, v in found.items() if v}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_reach_families_only_through_the_registry(entry):
    deps = graph().get(f"zoo.{entry}")
    if deps is None:
        pytest.skip(f"zoo.{entry} does not exist")
    bad = sorted(d for d in deps if len(d.split(".")) > 1 and d.split(".")[1] in FAMILIES)
    assert not bad, f"zoo.{entry} imports {bad}"


def test_no_family_or_core_module_imports_an_entry_point_or_benchmarks():
    edges = graph()
    entry_modules = {f"zoo.{e}" for e in ENTRY_POINTS}
    for name, path in modules().items():
        if name.split(".")[1:2] and name.split(".")[1] in (*FAMILIES, "core"):
            bad = sorted(edges[name] & entry_modules)
            assert not bad, f"{name} imports the entry point(s) {bad}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] == "benchmarks" for n in names), (
                    f"{name} imports the benchmarks"
                )


def test_nothing_in_the_package_writes_into_docs():
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not node.value.startswith(("docs/", "docs\\")), f"{name} names a docs/ path"
            if (
                isinstance(node, ast.BinOp)
                and isinstance(node.right, ast.Constant)
                and node.right.value == "docs"
            ):
                raise AssertionError(f"{name} builds a path into docs/")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_the_same_files_for_the_same_roles(family):
    roles = ("model", "module", "datamodule", "sources", "evaluate", "predict", "export", "serve")
    missing = [r for r in roles if not (PACKAGE / family / f"{r}.py").is_file()]
    assert not missing, f"zoo.{family} lacks {missing}"


def test_the_registry_names_every_family_and_each_module_declares_it():
    from zoo.core.family import ZooModule, family, registry

    assert set(FAMILIES) <= set(registry())
    for name in FAMILIES:
        cls = family(name)
        assert issubclass(cls, ZooModule) and cls.family == name


def test_every_family_says_how_to_predict_and_the_model_card_shows_it(tmp_path):
    """The model card's command comes from the family's class (`ZooModule.how_to_predict`), not a table
    keyed by family name in the core."""
    from zoo.core.export import model_card
    from zoo.core.family import ZooModule, family

    for name in FAMILIES:
        cls = family(name)
        assert "{folder}" in cls.how_to_predict and cls.how_to_predict != ZooModule.how_to_predict, name
        card = model_card(name, tmp_path, {}, ["safetensors"], None, cls.how_to_predict)
        assert cls.how_to_predict.format(folder=tmp_path) in card
    assert [n for n in FAMILIES if family(n).generates] == ["gpt"]
