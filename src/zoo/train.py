"""`python -m zoo.train [overrides]`: train any zoo family from conf/train.yaml.

Examples::

    python -m zoo.train                                   # small GPT on the offline default corpus
    python -m zoo.train experiment=shakespeare_char data.path=tinyshakespeare.txt
    python -m zoo.train model=gpt trainer=ddp_sim
    python -m zoo.train -m hparams_search=gpt_optuna      # Optuna sweep
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from zoo.core.cli import check_positive, hydra_entry
from zoo.core.errors import ZooError

# torch/Lightning are imported inside the functions: a mistyped override is refused before that import.


def train(cfg: DictConfig) -> tuple[float | None, dict[str, float]]:
    """Fit (and optionally test) the configured model; returns (cfg.optimized_metric's value, metrics)."""
    check_positive(
        cfg, ["trainer.max_steps", "data.batch_size", "data.block_size", "trainer.accumulate_grad_batches"]
    )
    import lightning.pytorch as pl

    from zoo.core.run import build, metric_values, resume_checkpoint, teardown_distributed

    pl.seed_everything(cfg.seed, workers=True)
    start = time.time()
    cfg.zoo_run = run_info()
    datamodule, model, trainer = build(cfg)
    output_dir = Path(cfg.paths.output_dir)

    if cfg.get("train", True):
        ckpt_path = resume_checkpoint(cfg)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if cfg.monitor not in trainer.callback_metrics and trainer.global_step > 0:
            # The step limit came before the first validation: validate the final weights once, so the
            # run still reports (and a sweep still reads) its monitored metric.
            print(
                f"[zoo] no validation ran before the step limit: validating once at step {trainer.global_step}"
            )
            trainer.validate(model, datamodule=datamodule, verbose=False)
    metrics = metric_values(trainer.callback_metrics)
    if cfg.get("test", False):
        # The best checkpoint by path: "best" makes Lightning warn when several ModelCheckpoints exist (the
        # step checkpoint is one), and fails when no validation ran during fit (a short run).
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
        if best is None:
            print("[zoo] no best checkpoint (no validation during fit): testing the final weights")
        trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True)
        metrics.update(metric_values(trainer.callback_metrics))

    optimized = cfg.get("optimized_metric")
    if optimized and optimized not in metrics:
        raise ZooError(
            f"optimized_metric={optimized} was not logged; logged metrics: {', '.join(sorted(metrics))}"
        )
    _report(cfg, trainer, model, datamodule, metrics, output_dir, time.time() - start)
    teardown_distributed()
    return (metrics.get(optimized) if optimized else None), metrics


def run_info() -> dict[str, Any]:
    """How this run was asked for (config choices and command-line overrides), kept with its config so a
    model card can say which recipe it is and how to reproduce it."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and v is not None}
        return {"choices": dict(choices), "overrides": list(hc.overrides.task)}
    except ValueError:  # not under Hydra
        return {"choices": {}, "overrides": []}


def _report(
    cfg: DictConfig,
    trainer: Any,
    model: Any,
    datamodule: Any,
    metrics: dict[str, float],
    output_dir: Path,
    seconds: float,
) -> None:
    """Rank 0 only: metrics.json, the export, and where everything went."""
    from zoo.core.run import write_json

    if trainer.global_rank != 0:
        return
    ckpt = trainer.checkpoint_callback
    payload = {
        "metrics": metrics,
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "wall_seconds": round(seconds, 2),
        "best_model_path": getattr(ckpt, "best_model_path", "") or None,
        "last_model_path": getattr(ckpt, "last_model_path", "") or None,
        "monitor": cfg.get("monitor"),
        "data_fingerprint": datamodule.fingerprint(),
    }
    write_json(output_dir / "metrics.json", payload)  # before the export: its model card reads it
    if cfg.get("export", True):
        from zoo.core.export import export_run

        try:
            payload["export_dir"] = str(export_run(model, output_dir / "export", cfg, datamodule=datamodule,
                                                   run_dir=output_dir))  # fmt: skip
        except ZooError as err:  # a family without an export still trained fine
            print(f"[zoo] no export: {err}")
        write_json(output_dir / "metrics.json", payload)
    logdirs = [lg.log_dir for lg in trainer.loggers if getattr(lg, "log_dir", None)]
    print(f"[zoo] run directory: {output_dir}")
    if ckpt is not None:
        print(
            f"[zoo] checkpoints:   {ckpt.dirpath} (best: {payload['best_model_path']}, last: {payload['last_model_path']})"
        )
    for logdir in logdirs:
        print(f"[zoo] logs:          {logdir}  (tensorboard --logdir {output_dir})")
    from zoo.core.trackers import finish, where

    finish(trainer.loggers)  # after validation/test: they log to the run too
    for line in where(trainer.loggers):
        print(f"[zoo] {line}")
    print(f"[zoo] metrics:       {output_dir / 'metrics.json'}")
    if payload.get("export_dir"):
        print(f"[zoo] export:        {payload['export_dir']}")


main = hydra_entry("train", lambda cfg: train(cfg)[0])


if __name__ == "__main__":
    main()
