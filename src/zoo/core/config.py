"""Compose the zoo's Hydra configs from Python (tests, notebooks, benchmarks) exactly as the CLI does."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from zoo.core.cli import CONFIG_DIR, check_cli_overrides, searchpath_override


def compose_config(
    overrides: list[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    config_name: str = "train",
) -> DictConfig:
    """The config `python -m zoo.<config_name> *overrides` would run with; `output_dir` replaces Hydra's
    run folder (and so `${paths.output_dir}`)."""
    overrides = list(overrides or [])
    check_cli_overrides(overrides)
    overrides += searchpath_override(overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(Path(output_dir).resolve())
    cfg.hydra.runtime.cwd = os.getcwd()
    HydraConfig.instance().set_config(cfg)  # makes ${hydra:...} resolvable
    OmegaConf.set_struct(cfg, False)
    return cfg
