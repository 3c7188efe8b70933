"""`python -m zoo.generate ckpt_path=... prompt="..." max_new_tokens=... temperature=... top_k=...`

An alias of ``python -m zoo.predict`` for the families whose predictions are text continuations
(`ZooModule.generates`: the GPT's), for a checkpoint, run folder or export folder: the same code (the
family's `ZooModule.predict`), the same keys (conf/generate.yaml); without ``prompt=``/``input=`` it
samples from an empty context.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from zoo.core.cli import hydra_entry
from zoo.core.errors import ZooError


def _generating_families() -> list[str]:
    from zoo.core.family import family, registry

    return [name for name in registry() if family(name).generates]


def _request(cfg: DictConfig) -> Any:
    from zoo.core.family import load_run

    run = load_run(cfg.ckpt_path)
    if not run.cls.generates:
        names = " or ".join(name.upper() for name in _generating_families())
        raise ZooError(
            f"ckpt_path={run.path}: a model of the {run.family} family ({run.cls.__module__}.{run.cls.__qualname__}); "
            f"zoo.generate samples {names} models only (python -m zoo.predict takes every family)"
        )
    if cfg.get("prompt") is None and not cfg.get("input"):
        with open_dict(cfg):
            cfg.prompt = ""  # the end-of-text token (or id 0) as the only context
    return run


def _predict(cfg: DictConfig) -> list[str]:
    """The command: the family's `predict` (texts printed, or written to ``output=``)."""
    run = _request(cfg)
    return run.module.predict(cfg, Path(cfg.paths.output_dir), run)


def generate(cfg: DictConfig) -> list[str]:
    """The sampled texts (prompt + continuation), one per prompt and sample; nothing printed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return _predict(cfg)


main = hydra_entry("generate", _predict)


if __name__ == "__main__":
    main()
