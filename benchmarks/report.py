"""`python -m benchmarks.report`: join docs/benchmarks/*.md (one file per family and part, each
written by `python -m benchmarks.<part>`) into docs/benchmarks.md.

``--rerender`` first renders every page again from its JSON (docs/benchmarks/<part>.json) with the
renderer its module names in ``PAGES`` (`benchmarks.common` describes the convention); nothing is measured.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGES_DIR = ROOT / "docs" / "benchmarks"


def renderers() -> dict[str, Any]:
    """page name -> render(results) (or (render, keep_from)), from every benchmarks module that declares
    ``PAGES``."""
    found: dict[str, Any] = {}
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        if path.stem in ("__init__", "report", "common"):
            continue
        found.update(getattr(importlib.import_module(f"benchmarks.{path.stem}"), "PAGES", {}))
    return found


def rerender(folder: Path = PAGES_DIR) -> list[str]:
    from benchmarks.common import rerender as one

    done = []
    for name, render in renderers().items():
        if (folder / f"{name}.json").is_file():
            one(folder / f"{name}.json", *(render if isinstance(render, tuple) else (render,)))
            done.append(name)
    return done


def joined(parts: list[Path]) -> str:
    """docs/benchmarks.md: the pages, in name order, under one title."""
    text = "# Benchmarks\n\nWritten by `make bench`; each section names the command, the machine and the date it was measured.\n\n"
    return text + "\n".join(p.read_text().strip() + "\n" for p in parts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rerender", action="store_true", help="re-render every page from its JSON first")
    args = p.parse_args(argv)
    if args.rerender:
        print(f"re-rendered from their JSON: {', '.join(rerender())}")
    parts = sorted(PAGES_DIR.glob("*.md"))
    (ROOT / "docs" / "benchmarks.md").write_text(joined(parts))
    print(f"docs/benchmarks.md: {len(parts)} sections ({', '.join(p.stem for p in parts)})")


if __name__ == "__main__":
    main()
