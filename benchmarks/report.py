"""`python -m benchmarks.report`: join docs/benchmarks/*.md (one file per family and part, each
written by `python -m benchmarks.<part>`) into docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parts = sorted((ROOT / "docs" / "benchmarks").glob("*.md"))
    text = "# Benchmarks\n\nWritten by `make bench`; each section names the command, the machine and the date it was measured.\n\n"
    text += "\n".join(p.read_text().strip() + "\n" for p in parts)
    (ROOT / "docs" / "benchmarks.md").write_text(text)
    print(f"docs/benchmarks.md: {len(parts)} sections ({', '.join(p.stem for p in parts)})")


if __name__ == "__main__":
    main()
