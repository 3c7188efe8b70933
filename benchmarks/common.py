"""What every benchmark page shares: the machine it ran on, the stamp of a measurement, Markdown tables, and
results kept as JSON beside the page rendered from them.

Every `benchmarks/<module>.py` that writes a page `docs/benchmarks/<part>.md` keeps its numbers in
`docs/benchmarks/<part>.json` (the source of truth: results plus `stamp`'s command, machine and date) and
renders the page from that JSON only, through this module: `header` (title and stamp), `table`,
`section` (a header, paragraphs and tables, then the results' hand-written "notes") and `write_page`.
Each such module names its pages in ``PAGES = {part: render}`` (or ``{part: (render, keep_from)}`` for a
page whose kept section starts at the heading `keep_from`); `python -m benchmarks.report --rerender`
re-renders every page from its JSON (tests/test_bench_pages.py checks the committed pages are exactly
that)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from zoo.core.callbacks import cpu_model


def machine(threads: int | None = None) -> str:
    """CPU model, cores (and torch threads), torch and Python versions, and the GPU when there is one."""
    desc = f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores"
    if threads is not None:
        desc += f", {threads} torch threads"
    desc += f", torch {torch.__version__}, Python {platform.python_version()}"
    if torch.cuda.is_available():
        desc += f", {torch.cuda.get_device_name()}"
    return desc


def stamp(command: str, threads: int | None = None) -> dict[str, str]:
    """What every measurement is stored with: the command that made it, the machine and the date."""
    import time

    return {"command": command, "machine": machine(threads), "date": time.strftime("%Y-%m-%d", time.gmtime())}


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table: floats with 4 significant digits, None as '-'."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows),
    ]


def header(title: str, stamp: dict[str, Any], level: int = 2) -> list[str]:
    """A section's title and its stamp as a list: the command (or "commands", several), the machine and
    the date it was measured."""
    commands = stamp.get("commands") or [stamp["command"]]
    lines = [f"{'#' * level} {title}", ""]
    if len(commands) == 1:
        lines.append(f"- command: `{commands[0]}`")
    else:
        lines += ["- commands:", *(f"  - `{c}`" for c in commands)]
    return [*lines, f"- machine: {stamp['machine']}", f"- date: {stamp['date']}", ""]


Block = str | list[str]


def section(title: str, results: dict[str, Any], *blocks: Block, level: int = 2) -> list[str]:
    """`header` of `results`' stamp, then each block (a paragraph, or lines such as a `table`) followed by
    a blank line, then `results["notes"]`: paragraphs written by hand next to the numbers (what a run's
    numbers alone cannot say: the load on the machine, why a goal is missed), kept in the JSON with them."""
    lines = header(title, results, level)
    for block in (*blocks, *results.get("notes", [])):
        lines += [block] if isinstance(block, str) else list(block)
        lines.append("")
    return lines


def read_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def write_page(
    md: Path, results_json: Path, results: dict[str, Any], body: list[str], keep_from: str | None = None
) -> None:
    """Write the results (JSON, the source of truth) and their page (Markdown rendered from them). The
    page's text from the `keep_from` heading on (a dated history section) is carried over as it is."""
    results_json.parent.mkdir(parents=True, exist_ok=True)
    results_json.write_text(json.dumps(results, indent=1, sort_keys=True, default=float) + "\n")
    kept = ""
    if keep_from and md.is_file():
        old = md.read_text()
        at = old.find(keep_from)
        kept = old[at:] if at >= 0 else ""
    md.write_text("\n".join(body).rstrip() + "\n" + ("\n" + kept if kept else ""))


def save(page: Path, results: dict[str, Any], render: Any, keep_from: str | None = None) -> None:
    """Write `results` to `page`'s .json and the page rendered from it by `render(results)` to its .md (its
    text from the `keep_from` heading on carried over, as `write_page` does)."""
    # Rendered from the results as the JSON holds them (keys sorted), so a re-render gives the same page.
    results = json.loads(json.dumps(results, sort_keys=True, default=float))
    write_page(page.with_suffix(".md"), page.with_suffix(".json"), results, render(results), keep_from)


def rerender(page: Path, render: Any, keep_from: str | None = None) -> None:
    """Re-render `page`'s .md from its .json (nothing measured)."""
    save(page, read_results(page.with_suffix(".json")), render, keep_from)
