"""The family registry on its own (no torch, no Lightning): family name -> ``package.module:Class``. Both
`zoo.core.family` (which imports the classes) and `zoo.core.trust` (which trusts their packages) read it."""

from __future__ import annotations

from importlib import metadata


def _builtin() -> dict[str, str]:
    from zoo.families import BUILTIN

    return dict(BUILTIN)


def registry() -> dict[str, str]:
    """Family name -> ``package.module:Class`` of its ZooModule: built-ins, then installed entry points."""
    table = _builtin()
    for ep in metadata.entry_points(group="zoo.families"):
        table.setdefault(ep.name, ep.value)
    return table
