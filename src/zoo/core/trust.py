"""What a stored config may name: the check that keeps loading a model from running code named inside it.

A checkpoint's ``zoo_config`` and an export's ``zoo.json`` carry the training run's config, and the entry
points rebuild parts of it with Hydra's ``instantiate`` (``zoo.eval`` rebuilds the data module). Hydra calls
whatever a ``_target_`` names — ``builtins.open`` truncates a file, Hydra's own blocklist stops only a few
names such as ``os.system``. So before anything of a stored config is imported or instantiated,
`check_stored_config` walks the whole tree (nested nodes and lists included) and refuses, in one line naming
the key, any ``_target_`` that is not

- a class defined in the zoo (``zoo.``) or in the package of a registered family
  (`zoo.core.family.registry`, passed in by the caller), or
- one of `LIBRARY_TARGETS`: the library classes and zoo factories the zoo's own configs (``conf/``) use, or
- a name listed in ``$ZOO_TRUSTED_TARGETS`` (comma-separated) by the user who runs the command.

Interpolations (``${...}``) are refused too: the zoo stores configs resolved, and a resolver such as
``oc.decode`` could build a new ``_target_`` node after this check. docs/reliability.md says what is trusted.
"""

from __future__ import annotations

import os
from typing import Any

from zoo.core.errors import ZooError

LIBRARY_TARGETS = frozenset(
    {
        # Trainer, callbacks and loggers of conf/trainer, conf/callbacks, conf/logger.
        "lightning.pytorch.Trainer",
        "lightning.pytorch.callbacks.DeviceStatsMonitor",
        "lightning.pytorch.callbacks.EarlyStopping",
        "lightning.pytorch.callbacks.EMAWeightAveraging",
        "lightning.pytorch.callbacks.LearningRateMonitor",
        "lightning.pytorch.callbacks.ModelCheckpoint",
        "lightning.pytorch.loggers.CSVLogger",
        "lightning.pytorch.loggers.TensorBoardLogger",
        # conf/trainer/fsdp.yaml's strategy: a zoo function, not a class.
        "zoo.core.strategies.fsdp",
    }
)
"""Exact ``_target_`` names trusted beyond the zoo's and the families' own classes (tests check that every
``_target_`` under conf/ outside ``hydra:`` is trusted)."""

TRUST_ENV = "ZOO_TRUSTED_TARGETS"
"""Environment variable: more exact ``_target_`` names to trust (a user's own configs using other classes)."""

HOW = "see 'What loading trusts' in the zoo's docs/reliability.md"


def trusted_packages(registry: dict[str, str]) -> tuple[str, ...]:
    """``zoo`` and the package of every registered family's module (``my_pkg.module:Cls`` -> ``my_pkg``), given
    `zoo.core.family.registry()`."""
    packages = {"zoo"}
    for value in registry.values():
        module = value.partition(":")[0]
        packages.add(module.rpartition(".")[0] or module)
    return tuple(sorted(p for p in packages if not _within(p, tuple(packages - {p}))))


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _extra_targets() -> set[str]:
    return {t.strip() for t in os.environ.get(TRUST_ENV, "").split(",") if t.strip()}


def check_target(
    target: Any, key: str, packages: tuple[str, ...], also: frozenset[str] = frozenset()
) -> None:
    """Refuse a ``_target_`` value that is not trusted (see the module docstring). Nothing outside the trusted
    packages is imported: importing a module already runs its code."""
    from hydra._internal.utils import _locate

    if not isinstance(target, str) or not target.strip():
        raise ZooError(f"{key}={target!r}: refused: a _target_ must name a class ({HOW})")
    if target in LIBRARY_TARGETS or target in also or target in _extra_targets():
        return
    if not _within(target, packages):
        raise ZooError(
            f"{key}={target}: refused: a stored config may only name classes of {', '.join(packages)} or of the "
            f"allowlist (add it to ${TRUST_ENV} if you trust this file; {HOW})"
        )
    try:
        obj = _locate(target)
    except Exception as err:  # noqa: BLE001  (any import failure: the name is simply not loadable)
        raise ZooError(f"{key}={target}: refused: cannot be imported ({type(err).__name__})") from None
    # `zoo.core.run.os.system` starts with `zoo.` but is not the zoo's: the object itself must be a class
    # defined in a trusted package.
    if not isinstance(obj, type) or not _within(getattr(obj, "__module__", "") or "", packages):
        what = (
            f"a class of {obj.__module__}" if isinstance(obj, type) else f"not a class ({type(obj).__name__})"
        )
        raise ZooError(
            f"{key}={target}: refused: {what}; a stored config may only name classes of the zoo ({HOW})"
        )


def _walk(node: Any, key: str, packages: tuple[str, ...], interpolations: bool, also: frozenset[str]) -> None:
    if isinstance(node, dict):
        for name, value in node.items():
            child = f"{key}.{name}" if key else str(name)
            if name == "_target_":
                check_target(value, child, packages, also)
            else:
                _walk(value, child, packages, interpolations, also)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            _walk(value, f"{key}[{i}]", packages, interpolations, also)
    elif interpolations and isinstance(node, str) and "${" in node:
        raise ZooError(
            f"{key}={node[:80]}: refused: a stored config holds an interpolation (the zoo stores configs resolved; "
            f"a resolver could build nodes this check never saw; {HOW})"
        )


def check_stored_config(
    config: Any,
    where: str,
    packages: tuple[str, ...],
    interpolations: bool = True,
    also: frozenset[str] = frozenset(),
) -> None:
    """Refuse a stored config (a plain dict/list tree, a DictConfig, or YAML text) holding an untrusted
    ``_target_`` anywhere, or (with `interpolations`) a ``${...}`` interpolation; the one-line error starts
    with `where` (``ckpt_path=...``) and names the key. `packages`: `trusted_packages`. `also`: more names to trust (those the command's own
    config instantiates anyway)."""
    if config is None:
        return
    if isinstance(config, str):
        import yaml

        try:
            config = yaml.safe_load(config)
        except yaml.YAMLError as err:
            raise ZooError(
                f"{where}: the stored config is not readable YAML ({type(err).__name__})"
            ) from None
    else:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(config, DictConfig | ListConfig):
            config = OmegaConf.to_container(config, resolve=False)
    try:
        _walk(config, "", packages, interpolations, also)
    except ZooError as err:
        raise ZooError(f"{where}: {err}") from None


def check_hyper_parameters(checkpoint: dict[str, Any], where: str, packages: tuple[str, ...]) -> None:
    """The checkpoint's ``hyper_parameters`` become the module's constructor arguments: no ``_target_`` outside
    the trusted classes, and no ``_instantiator`` (Lightning's hook for a constructor named in the checkpoint,
    allowlisted by Lightning itself; the zoo never writes one)."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if isinstance(hparams, dict) and "_instantiator" in hparams:
        raise ZooError(
            f"{where}: hyper_parameters._instantiator={hparams['_instantiator']}: refused: the zoo's modules are "
            f"built by their own class ({HOW})"
        )
    check_stored_config(hparams, where, packages, interpolations=False)


def targets_in(config: Any) -> frozenset[str]:
    """Every ``_target_`` string in a config tree (what a command's own config will instantiate)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(config, DictConfig | ListConfig):
        config = OmegaConf.to_container(config, resolve=False)
    found: set[str] = set()
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found.update(v for k, v in node.items() if k == "_target_" and isinstance(v, str))
            stack.extend(v for k, v in node.items() if k != "_target_")
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return frozenset(found)
