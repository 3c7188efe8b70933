"""Benchmarks of the zoo, run from the repository root: `python -m benchmarks.<family>` (or `make bench`).

They compose the configs as a user would and write their results into docs/; nothing in `src/zoo`
imports them."""
