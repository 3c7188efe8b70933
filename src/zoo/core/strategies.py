"""Strategy builders for configs that need Python objects (classes) rather than strings."""

from __future__ import annotations

import importlib
from typing import Any

from lightning.pytorch.strategies import FSDPStrategy

from zoo.core.errors import ZooError


def _import(path: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ZooError(f"trainer.strategy.wrap: cannot import {path} ({err})") from err


def fsdp(
    wrap: list[str],
    sharding_strategy: str = "FULL_SHARD",
    activation_checkpointing: bool = False,
    state_dict_type: str = "full",
    **kwargs: Any,
) -> FSDPStrategy:
    """FSDP that shards (and optionally re-computes) each instance of the named block classes."""
    classes = {_import(path) for path in wrap}
    return FSDPStrategy(
        auto_wrap_policy=classes,
        activation_checkpointing_policy=classes if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        **kwargs,
    )
