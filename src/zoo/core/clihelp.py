"""``python -m zoo.<command> --help``: what the command does and the options a user picks, read from the
command's own config (conf/<command>.yaml: its comments document every key) and the config groups it
composes. Hydra's generic help names the calling module ("cli is powered by Hydra"), lists every group of
every command and the private ``_base``/``_schema_*`` files; its own help stays under ``--hydra-help``."""

from __future__ import annotations

import re
import textwrap
from importlib import metadata
from types import ModuleType

from zoo.core.cli import CONFIG_DIR, FREE_TEXT_KEYS, GROUPS, available

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
