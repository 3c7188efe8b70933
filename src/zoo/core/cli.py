"""Command-line checks that need no heavy imports, so a mistyped override fails in about a second."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo.core.errors import ZooError

CONFIG_DIR = Path(os.environ.get("ZOO_CONFIG_DIR", Path(__file__).resolve().parents[3] / "conf"))

# Config groups a user picks on the command line; an unknown choice is refused before Hydra runs.
GROUPS = ("model", "data", "trainer", "callbacks", "logger", "paths", "experiment", "hparams_search", "debug")


def available(group: str) -> list[str]:
    root = CONFIG_DIR / group
    return sorted(
        str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml") if not p.name.startswith("_")
    )


def check_cli_overrides(argv: list[str]) -> None:
    """Refuse `group=name` overrides whose config file does not exist, in one line."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in GROUPS or value in ("", "null"):
            continue
        names = value.strip("[]").split(",")
        if value.startswith(("choice(", "range(", "interval(", "glob(")):
            continue
        for name in names:
            if not (CONFIG_DIR / key / f"{name.strip()}.yaml").is_file():
                raise ZooError(
                    f"unknown {key}={name.strip()}: expected one of {', '.join(available(key))} (conf/{key}/)"
                )


def family_of(target: str) -> str:
    """`zoo.gpt.module.GPTModule` -> `gpt`: a family is the zoo subpackage its classes live in."""
    parts = str(target).split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "zoo" else ""


def check_positive(cfg: Any, keys: list[str]) -> None:
    """Refuse zero or negative lengths and sizes (`data.block_size=0` and friends) in one line."""
    from omegaconf import OmegaConf

    for key in keys:
        value = OmegaConf.select(cfg, key)
        if key == "trainer.max_steps" and value == -1:  # Lightning's "no step limit"
            continue
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            hint = " (or -1 for no limit)" if key == "trainer.max_steps" else ""
            raise ZooError(f"{key}={value} must be a positive integer{hint}")


def cli_guard() -> None:
    check_cli_overrides(sys.argv[1:])


def hydra_entry(config_name: str, task: Callable[[Any], Any]) -> Callable[[], Any]:
    """`main()` of a `python -m zoo.<command>` module: unknown group choices are refused in one line before
    Hydra (and torch) load, then Hydra composes `conf/<config_name>.yaml` and runs `task(cfg)`; its return
    value goes back to Hydra, so sweepers can optimize it. `ZooError`s print as one line, exit status 2."""
    import hydra
    from omegaconf import OmegaConf

    from zoo.core.errors import exit_on_user_error

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    @exit_on_user_error
    def run(cfg: Any) -> Any:
        OmegaConf.set_struct(cfg, False)
        return task(cfg)

    @exit_on_user_error
    def main() -> Any:
        cli_guard()
        return run()

    return main
