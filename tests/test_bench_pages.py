"""Every benchmark page is rendered from its results JSON by the shared renderer (`benchmarks.common`):
the renderer's cells and kept history section, the committed pages equal to what their JSON renders to,
and no benchmark module but `benchmarks.common` building Markdown tables or writing pages by itself."""

from __future__ import annotations

import ast
import json

import pytest
from benchmarks.common import header, rerender, save, section, stamp, table, write_page

from tests.conftest import ROOT

BENCH = ROOT / "benchmarks"
PAGES = ROOT / "docs" / "benchmarks"

# Modules not (yet) on the convention, each with the rule it still breaks and why. The test fails when an
# exempted module no longer breaks its rule: then its line goes.
EXEMPT: dict[tuple[str, str], str] = {}


def test_table_cells_floats_none_and_strings():
    lines = table(["a", "b", "c", "d"], [[1.234567, None, "x", 3], [12345.678, 0.000123456, True, ""]])
    assert lines == [
        "| a | b | c | d |",
        "|---|---|---|---|",
        "| 1.235 | - | x | 3 |",
        "| 1.235e+04 | 0.0001235 | True |  |",
    ]


def test_section_renders_stamp_blocks_and_the_notes_kept_in_the_json():
    r = {
        "command": "python -m benchmarks.x --a 1",
        "machine": "m",
        "date": "2026-12-07",
        "notes": ["hand\nwritten"],
    }
    assert section("T", r, "para", table(["k"], [[1]]), level=3) == [
        "### T", "", "- command: `python -m benchmarks.x --a 1`", "- machine: m", "- date: 2026-12-07", "",
        "para", "", "| k |", "|---|", "| 1 |", "", "hand\nwritten", "",
    ]  # fmt: skip
    several = header("T", {"commands": ["a", "b"], "machine": "m", "date": "d"})
    assert several[2:5] == ["- commands:", "  - `a`", "  - `b`"]
    s = stamp("cmd", threads=3)
    assert s["command"] == "cmd" and "3 torch threads" in s["machine"] and len(s["date"]) == 10


def test_write_page_keeps_the_history_section_and_the_json_is_the_source(tmp_path):
    md, js = tmp_path / "p.md", tmp_path / "p.json"
    md.write_text("# old page\n\nold numbers\n\n## History (2026-12-01)\n\nkept | as | it is\n")
    write_page(md, js, {"x": 1.5, "y": None}, ["# New", "", *table(["x"], [[1.5]])], keep_from="## History")
    assert (
        md.read_text() == "# New\n\n| x |\n|---|\n| 1.5 |\n\n## History (2026-12-01)\n\nkept | as | it is\n"
    )
    assert json.loads(js.read_text()) == {"x": 1.5, "y": None}
    write_page(md, js, {}, ["# Newer"], keep_from="## Nothing like it")  # no such heading: nothing kept
    assert md.read_text() == "# Newer\n"
    save(
        tmp_path / "q.json",
        {"v": 2.0, "command": "c", "machine": "m", "date": "d"},
        lambda r: section("Q", r, f"v={r['v']}"),
    )
    assert (tmp_path / "q.md").read_text().endswith("v=2.0\n")
    (tmp_path / "q.md").write_text("# hand edit\n\n## History\n\nold runs\n")
    rerender(tmp_path / "q.json", lambda r: section("Q", r, f"v={r['v']}"), keep_from="## History")
    text = (tmp_path / "q.md").read_text()
    assert "hand edit" not in text and text.endswith("v=2.0\n\n## History\n\nold runs\n")


def names_commands(results: dict) -> bool:
    """The results name their command, or every part (or every entry of a part: one per log) names its own."""
    if results.get("command") or results.get("commands"):
        return True
    parts = [r for r in results.values() if isinstance(r, dict)]
    return bool(parts) and all(names_commands(r) for r in parts)


def test_every_committed_page_is_what_its_json_renders_to():
    from benchmarks.report import renderers

    pages = renderers()
    assert {"quant", "serve", "docker", "gpu", "gpt-cpu", "events", "tft", "prometheus", "gpt-recipes", "gpt-gpu", "gpt-speed", "gpt-options",
            "gpt-options-timing", "gpt-prep"} <= set(pages)  # fmt: skip
    for name, render in pages.items():
        render, keep_from = render if isinstance(render, tuple) else (render, None)
        results = json.loads((PAGES / f"{name}.json").read_text())
        assert names_commands(results), f"{name}.json names no command"
        page = (PAGES / f"{name}.md").read_text()
        if keep_from and keep_from in page:  # the kept section is carried over as it is, after a blank line
            page = page[: page.index(keep_from)].removesuffix("\n")
        text = "\n".join(render(results)).rstrip() + "\n"
        assert page == text, f"docs/benchmarks/{name}.md is not its JSON rendered"


def violations(source: str) -> set[str]:
    """The rules a benchmarks module's source breaks: "table" (a Markdown table separator of its own) and
    "pages" (it names a .md page but declares no ``PAGES`` renderers saved through benchmarks.common)."""
    tree = ast.parse(source)
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    found = set()
    if any("|---" in s or "|:--" in s or "---:|" in s for s in strings):
        found.add("table")
    names_page = any(s.endswith(".md") for s in strings)
    declares = any(
        isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PAGES" for t in n.targets)
        for n in tree.body
    )
    saves = any(
        isinstance(n, ast.ImportFrom) and n.module == "benchmarks.common" and {a.name for a in n.names} & {"save", "write_page"}
        for n in ast.walk(tree)
    )  # fmt: skip
    if names_page and not (declares and saves):
        found.add("pages")
    return found


def test_the_checker_catches_a_hand_built_table_and_a_page_written_by_hand():
    assert violations('lines = ["| a |", "|---|"]') == {"table"}
    assert violations('lines = ["| a |", "|---:|"]') == {"table"}
    assert violations('from pathlib import Path\nPath("x.md").write_text("text")') == {"pages"}
    ok = "from benchmarks.common import save, table\nPAGES = {'x': render}\nPAGE = 'x.md'\n"
    assert violations(ok) == set()


# common is the renderer; report joins the rendered pages into docs/benchmarks.md.
MODULES = sorted(p for p in BENCH.glob("*.py") if p.stem not in ("common", "report", "__init__"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_no_module_but_common_renders_markdown(path):
    broken = violations(path.read_text())
    for rule in broken:
        assert (path.stem, rule) in EXEMPT, (
            f"benchmarks/{path.name} breaks '{rule}': render through benchmarks.common"
        )
    for (module, rule), why in EXEMPT.items():
        if module == path.stem:
            assert rule in broken, (
                f"benchmarks/{path.name} follows '{rule}' now: remove its EXEMPT line ({why})"
            )


def test_docs_benchmarks_md_joins_the_committed_pages():
    from benchmarks.report import joined

    page = ROOT / "docs" / "benchmarks.md"
    assert page.read_text() == joined(sorted(PAGES.glob("*.md"))), (
        "docs/benchmarks.md is stale: run python -m benchmarks.report"
    )
