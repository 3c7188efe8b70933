"""`python -m zoo.eval ckpt_path=...`: evaluate a checkpoint (or run folder, or export folder) of any family.

The run's config is stored inside every checkpoint and export, so it alone is enough: its data config is
rebuilt (``data=<family>/<name>`` evaluates on another dataset of the same family instead). The family's
`ZooModule.evaluate` does the work (baselines, backtests, plots where it has them). Results go to
``<run dir>/eval_metrics.json``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from zoo.core.cli import hydra_entry
from zoo.core.errors import ZooError


def evaluate(cfg: DictConfig) -> dict[str, float]:
    from zoo.core.family import family_of_config, load_run
    from zoo.core.run import _instantiate, check_precision, choice, write_json

    run = load_run(cfg.ckpt_path)
    data_cfg = cfg.data if cfg.get("data") else run.config.get("data")
    if data_cfg is None:
        raise ZooError(f"ckpt_path={cfg.ckpt_path}: no data config stored with the model: pass data=...")
    if cfg.get("data"):
        data_cfg = OmegaConf.merge(data_cfg, {"cache_dir": cfg.paths.cache_dir})
    data_family = family_of_config(data_cfg, "data")
    if run.family != data_family:
        raise ZooError(
            f"ckpt_path={cfg.ckpt_path} holds a {run.family} model, which cannot be evaluated on "
            f"data={choice('data')} (family '{data_family}'): pick a data={run.family}/... config or leave data= out"
        )
    check_precision(cfg)
    datamodule = _instantiate(data_cfg, "data")
    datamodule.prepare_data()
    model = run.module
    where = f"data={choice('data') if cfg.get('data') else run.config.data.get('name', '?')}"
    model.check_data(datamodule, where)  # e.g. another tokenizer: ids would index the wrong embeddings
    trainer = _instantiate(cfg.trainer, "trainer", logger=False, callbacks=[])
    output_dir = Path(cfg.paths.output_dir)
    metrics = model.evaluate(datamodule, trainer, cfg, output_dir)
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
