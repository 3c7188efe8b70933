"""Shared fixtures: real data beside the checkout (skipped when absent), composed configs, run folders."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ZOO_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real public datasets); tests using it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data cache for the whole session, so prepared datasets are shared between tests."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def compose(tmp_path: Path, cache_dir: Path):
    """compose(*overrides) -> the config `python -m zoo.train *overrides` would run, writing to tmp_path."""
    from zoo.core.config import compose_config

    def _compose(*overrides: str, config_name: str = "train"):
        base = (
            [f"paths.cache_dir={cache_dir}", "logger=none"]
            if config_name == "train"
            else [f"paths.cache_dir={cache_dir}"]
        )
        return compose_config([*base, *overrides], output_dir=tmp_path / "run", config_name=config_name)

    return _compose


def run_cli(
    module: str, *args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m module *args` as a user would; returns the completed process (text output)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on `n` torch threads, then restore the count (tiny models train fastest on one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def exported_run(root: Path) -> dict[str, Path]:
    """The run trained into root/run: its folder, its last checkpoint and its export (zoo.core.export)."""
    from zoo.core.export import export_run
    from zoo.core.family import load_run

    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    run = load_run(ckpt)
    export = export_run(run.module, root / "export", run.config, run_dir=root / "run")
    return {"run": root / "run", "ckpt": ckpt, "export": export}
