"""`python -m zoo.eval ckpt_path=...`: evaluate a checkpoint of any family.

The run's config is stored inside every checkpoint, so the checkpoint alone is enough: its data config
is rebuilt (``data=<family>/<name>`` evaluates on another dataset of the same family instead). A family
whose LightningModule defines ``zoo_evaluate(datamodule, trainer, cfg, output_dir) -> dict`` gets its own
evaluation (baselines, backtests, plots); otherwise the split is run through ``trainer.validate/test``.
Results go to ``<run dir>/eval_metrics.json``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zoo.core.cli import hydra_entry
from zoo.core.errors import ZooError


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a zoo checkpoint without executing code from it (weights_only); one-line errors otherwise."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise ZooError(f"ckpt_path={path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        # torch's own first line is a paragraph about weights_only defaults: the type says enough.
        raise ZooError(
            f"ckpt_path={path}: not a readable checkpoint ({type(err).__name__}): "
            "expected a .ckpt file written by python -m zoo.train"
        ) from err


def saved_config(checkpoint: dict[str, Any], path: str | Path) -> DictConfig:
    blob = checkpoint.get("zoo_config")
    if not blob:
        raise ZooError(f"ckpt_path={path}: no zoo config inside (not written by python -m zoo.train)")
    return OmegaConf.create(blob)


def module_class(target: str) -> type:
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    from zoo.core.run import _instantiate, check_precision, choice, family_of, metric_values, write_json

    checkpoint = load_checkpoint(cfg.ckpt_path)
    saved = saved_config(checkpoint, cfg.ckpt_path)
    data_cfg = cfg.data if cfg.get("data") else saved.data
    if cfg.get("data"):
        data_cfg = OmegaConf.merge(data_cfg, {"cache_dir": cfg.paths.cache_dir})
    model_family, data_family = (
        family_of(saved.model.get("_target_", "")),
        family_of(data_cfg.get("_target_", "")),
    )
    if model_family != data_family:
        raise ZooError(
            f"ckpt_path={cfg.ckpt_path} holds a {model_family} model, which cannot be evaluated on "
            f"data={choice('data')} (family '{data_family}'): pick a data={model_family}/... config or leave data= out"
        )
    check_precision(cfg)
    datamodule = _instantiate(data_cfg, "data")
    datamodule.prepare_data()
    cls = module_class(saved.model._target_)
    model = cls.load_from_checkpoint(cfg.ckpt_path, map_location="cpu", weights_only=True)
    model.on_load_checkpoint(checkpoint)
    if hasattr(model, "check_data"):  # e.g. another tokenizer: ids would index the wrong embeddings
        model.check_data(
            datamodule, f"data={choice('data') if cfg.get('data') else saved.data.get('name', '?')}"
        )
    trainer = _instantiate(cfg.trainer, "trainer", logger=False, callbacks=[])
    output_dir = Path(cfg.paths.output_dir)
    if hasattr(model, "zoo_evaluate"):
        metrics = model.zoo_evaluate(datamodule, trainer, cfg, output_dir)
    else:
        run = trainer.test if cfg.split == "test" else trainer.validate
        results = run(model, datamodule=datamodule)
        metrics = metric_values(results[0] if results else {})
    write_json(
        output_dir / "eval_metrics.json",
        {"ckpt_path": str(cfg.ckpt_path), "split": cfg.split, "metrics": metrics},
    )
    print(f"[zoo] evaluation of {cfg.ckpt_path} ({cfg.split}):")
    for name, value in sorted(metrics.items()):
        print(f"  {name:40s} {value:.6g}")
    print(f"[zoo] written to {output_dir / 'eval_metrics.json'}")
    return metrics


main = hydra_entry("eval", evaluate)


if __name__ == "__main__":
    main()
