"""Command-line checks that need no heavy imports (a mistyped override fails in about a second), verbatim
free-text values (`prompt=`), and each command's `--help`."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from zoo.core.errors import ZooError

# The configs ship inside the package (src/zoo/conf is a symlink to the repository's conf/ in a checkout,
# a real folder in a wheel), so an installed zoo finds them from any directory.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
# A user's own config folders (same layout: experiment/, model/, data/...), searched after the zoo's.
USER_CONFIG_ENV = "ZOO_CONFIG_DIR"

# Config groups a user picks on the command line; an unknown choice is refused before Hydra runs.
GROUPS = ("model", "data", "trainer", "callbacks", "logger", "paths", "experiment", "hparams_search", "debug")


def user_config_dirs(argv: list[str] | None = None) -> list[Path]:
    """Extra config folders: ``$ZOO_CONFIG_DIR`` (os.pathsep-separated) and ``hydra.searchpath=[file://...]``
    given on the command line."""
    dirs = [Path(d).expanduser() for d in os.environ.get(USER_CONFIG_ENV, "").split(os.pathsep) if d]
    for arg in argv or []:
        if arg.lstrip("+").startswith("hydra.searchpath="):
            for item in arg.split("=", 1)[1].strip("[]").split(","):
                item = item.strip().strip("'\"")
                if item.startswith("file://"):
                    dirs.append(Path(item[len("file://") :]).expanduser())
    return dirs


def config_dirs(argv: list[str] | None = None) -> list[Path]:
    return [CONFIG_DIR, *user_config_dirs(argv)]


def searchpath_override(argv: list[str]) -> list[str]:
    """``$ZOO_CONFIG_DIR`` as a Hydra searchpath override (none when unset or already given)."""
    extra = [d for d in os.environ.get(USER_CONFIG_ENV, "").split(os.pathsep) if d]
    if not extra or any(a.lstrip("+").startswith("hydra.searchpath=") for a in argv):
        return []
    for d in extra:
        if not Path(d).expanduser().is_dir():
            raise ZooError(f"{USER_CONFIG_ENV}={d}: no such folder (expected a config folder like conf/)")
    return ["hydra.searchpath=[" + ",".join(f"file://{Path(d).expanduser().resolve()}" for d in extra) + "]"]


def available(group: str, argv: list[str] | None = None) -> list[str]:
    names: set[str] = set()
    for base in config_dirs(argv):
        root = base / group
        if root.is_dir():
            names.update(
                str(p.relative_to(root).with_suffix(""))
                for p in root.rglob("*.yaml")
                if not p.name.startswith("_")
            )
    return sorted(names)


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
            if not any((base / key / f"{name.strip()}.yaml").is_file() for base in config_dirs(argv)):
                raise ZooError(
                    f"unknown {key}={name.strip()}: expected one of {', '.join(available(key, argv))} (conf/{key}/)"
                )


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


FREE_TEXT_KEYS = ("prompt",)
"""Keys whose value is free text (a GPT prompt): taken verbatim from the command line, never parsed by Hydra,
so ``prompt="def main("`` (bash passes ``prompt=def main(``) reaches the model as typed."""


def split_free_text(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the arguments Hydra parses, {key: verbatim value} of the `FREE_TEXT_KEYS` given)."""
    rest, raw = [], {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key in FREE_TEXT_KEYS:
            raw[key] = value
        else:
            rest.append(arg)
    return rest, raw


def check_override_syntax(argv: list[str]) -> None:
    """An override Hydra's grammar cannot parse is refused in one line with the quoting that fixes it (Hydra
    itself prints its parser's complaint about ``extraneous input '('``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException:
            key, _, value = arg.partition("=")
            quoted = f"'{key}=\"{value}\"'" if '"' not in value else f"\"{key}='{value}'\""
            raise ZooError(
                f"{arg}: Hydra cannot parse this value (spaces, ( ) [ ] {{ }} , = : and quotes are its syntax): "
                f"quote it for Hydra inside the shell's quotes: {quoted}"
            ) from None


def cli_guard() -> dict[str, str]:
    """Checks of the command line before Hydra runs; returns the free-text values it took out of argv."""
    argv, raw = split_free_text(sys.argv[1:])
    check_cli_overrides(argv)
    check_override_syntax(argv)
    sys.argv[1:] = [*argv, *searchpath_override(argv)]
    return raw


def hydra_entry(config_name: str, task: Callable[[Any], Any]) -> Callable[[], Any]:
    """`main()` of a `python -m zoo.<command>` module: unknown group choices are refused in one line before
    Hydra (and torch) load, then Hydra composes `conf/<config_name>.yaml` and runs `task(cfg)`; its return
    value goes back to Hydra, so sweepers can optimize it. `ZooError`s print as one line, exit status 2."""
    import hydra
    from omegaconf import OmegaConf

    from zoo.core.errors import exit_on_user_error

    free_text: dict[str, str] = {}

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    @exit_on_user_error
    def run(cfg: Any) -> Any:
        from zoo.core import logs

        logs.configure()
        for key, value in free_text.items():
            if key not in cfg:
                raise ZooError(
                    f"{key}={value}: not a key of the {config_name} command (conf/{config_name}.yaml)"
                )
        OmegaConf.set_struct(cfg, False)
        for key, value in free_text.items():
            cfg[key] = value
        return task(cfg)

    @exit_on_user_error
    def main() -> Any:
        if any(arg in ("--help", "-h") for arg in sys.argv[1:]):
            print(command_help(config_name, sys.modules.get(task.__module__)))
            return None
        free_text.clear()
        free_text.update(cli_guard())
        return run()

    return main


# -- --help ------------------------------------------------------------------------------------------------
# `python -m zoo.<command> --help`: what the command does and the options a user picks, read from the
# command's own config (conf/<command>.yaml, whose comments document every key) and the groups it composes.
# Hydra's generic help names the calling module ("cli is powered by Hydra"), lists every group of every
# command and the private _base/_schema_* files; Hydra's own help stays under --hydra-help.

WIDTH = 100
HIDDEN_KEYS = ("task_name",)  # set by the command itself
HIDDEN_GROUPS = ("paths", "hydra")  # where things go / Hydra's own: one option each, see the footer
KEY_LINE = re.compile(r"^([A-Za-z_][\w]*):\s*(.*?)\s*$")
USAGE_LEAD = re.compile(r"^`python -m [^`]*`(?:\s*\(.*?\))?:\s*(.+)$")
GROUP_LINE = re.compile(r"^\s*-\s*(?:override\s+)?/?([\w/]+)\s*:\s*([^#\s]*)\s*(?:#\s*(.*))?$")


def _script(name: str) -> str | None:
    for ep in metadata.entry_points(group="console_scripts"):
        if ep.value.split(":")[0] == f"zoo.{name}":
            return ep.name
    return None


def _parse(text: str) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, str, str]]]:
    """(the header comment, [(group, comment)] of the defaults list, [(key, default, comment)])."""
    header: list[str] = []
    groups: list[tuple[str, str]] = []
    keys: list[tuple[str, str, str]] = []
    comment: list[str] = []
    in_defaults = started = False
    for line in text.splitlines():
        if line.startswith("#"):
            (comment if started else header).append(line.lstrip("#").strip())
            continue
        started = started or bool(line.strip())
        if in_defaults and line.startswith((" ", "-")):
            found = GROUP_LINE.match(line)
            if found:
                groups.append((found.group(1), found.group(3) or ""))
            continue
        in_defaults = False
        found = KEY_LINE.match(line)
        if found:
            key, value = found.groups()
            if key == "defaults":
                in_defaults = True
            elif key not in HIDDEN_KEYS and key != "hydra":
                keys.append((key, value.split(" #")[0] or "...", " ".join(comment)))
            comment = []
        elif not line.strip():
            comment = []
    return header, groups, keys


def _wrapped(left: str, text: str, indent: int = 30) -> list[str]:
    if not text:
        return [f"  {left}"]
    first = [f"  {left}"] if len(left) > indent - 3 else []  # a long key: its text starts on the next line
    lead = " " * indent if first else f"  {left:<{indent - 3}} "
    body = textwrap.fill(
        text, WIDTH, initial_indent=lead, subsequent_indent=" " * indent, break_on_hyphens=False
    )
    return [*first, body]


def _summary(doc: str) -> str:
    """The module docstring's first paragraph, without the command line it may start with."""
    paragraphs = [" ".join(p.split()) for p in doc.strip().split("\n\n") if p.strip()]
    if not paragraphs:
        return ""
    found = USAGE_LEAD.match(paragraphs[0])
    if found:
        text = found.group(1)
    elif paragraphs[0].startswith("`python -m"):  # a bare command line: the next paragraph says what it does
        text = paragraphs[1] if len(paragraphs) > 1 else ""
    else:
        text = paragraphs[0]
    return text[:1].upper() + text[1:]


def command_help(name: str, module: ModuleType | None = None) -> str:
    """The ``--help`` text of ``python -m zoo.<name>``."""
    header, groups, keys = _parse((CONFIG_DIR / f"{name}.yaml").read_text())
    script = _script(name)
    title = f"python -m zoo.{name}" + (f" (or {script})" if script else "")
    doc = _summary(getattr(module, "__doc__", None) or "")
    lines = [title, ""]
    if doc:
        lines += [textwrap.fill(" ".join(doc.split()), WIDTH), ""]
    if header:
        lines += ["Usage:", *[f"  {h}" for h in header], ""]
    if keys:
        lines.append("Options (key=value; the default shown):")
        for key, value, comment in keys:
            lines += _wrapped(f"{key}={value}", comment)
        lines.append("")
    picked = [(g, c) for g, c in groups if g.split("/")[0] in GROUPS and g not in HIDDEN_GROUPS]
    if picked:
        lines.append("Config groups (group=option):")
        for group, comment in picked:
            lines += _wrapped(
                f"{group}=", ", ".join(available(group)) + (f"  ({comment})" if comment else ""), 18
            )
        lines.append("")
    free = ", ".join(f"{k}=" for k in FREE_TEXT_KEYS if any(k == key for key, _, _ in keys))
    lines += [
        textwrap.fill(
            "Any key of the composed config is set the same way (foo.bar=value); --cfg job prints the whole "
            "config, --hydra-help Hydra's own flags. "
            + (f"{free} reaches the model exactly as typed. " if free else "")
            + "Quote values holding spaces or ( ) [ ] { } , : for Hydra inside the shell's quotes: "
            "'input=\"my file (1).csv\"'.",
            WIDTH,
        )
    ]
    return "\n".join(lines)
