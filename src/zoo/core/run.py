"""What the entry points (train, eval) share: checks that turn bad configs into one-line errors, and
building datamodule, model, callbacks, loggers and trainer from a Hydra config."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from zoo.core.errors import ZooError
from zoo.core.family import family_of_config, metric_values  # noqa: F401  (re-exported)

PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")


def choice(group: str) -> str:
    """The option the user picked for a config group, for error messages."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices.get(group))
    except (ValueError, AttributeError):
        return "?"


def check_family(cfg: DictConfig) -> None:
    model_family = family_of_config(cfg.get("model"), "model")
    data_family = family_of_config(cfg.get("data"), "data")
    if model_family != data_family:
        raise ZooError(
            f"model={choice('model')} (family '{model_family}') cannot train on data={choice('data')} "
            f"(family '{data_family}'): pick a data={model_family}/... config"
        )


def resolve_accelerator(accelerator: str) -> str:
    if accelerator in ("auto", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return {"gpu": "cuda"}.get(str(accelerator), str(accelerator))


def check_precision(cfg: DictConfig) -> None:
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision not in PRECISIONS:
        raise ZooError(
            f"trainer.precision={precision} is not supported: expected one of {', '.join(PRECISIONS)}"
        )
    accelerator = resolve_accelerator(cfg.trainer.get("accelerator", "auto"))
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise ZooError(
            f"trainer.accelerator={cfg.trainer.accelerator} needs a CUDA GPU and none is visible: use trainer=cpu"
        )
    if accelerator == "cpu" and precision.startswith("16"):
        raise ZooError(
            f"trainer.precision={precision} is not supported on CPU (float16 matmuls run ~100x slower there): "
            "use trainer.precision=bf16-mixed or 32-true"
        )
    if accelerator == "cuda" and precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        raise ZooError(
            f"trainer.precision={precision} needs a GPU with bfloat16 support: use trainer.precision=16-mixed"
        )


PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _raised_in_zoo(err: BaseException) -> bool:
    """Whether `err` was raised by the zoo's own code (a bug to show in full), not by Hydra or a library
    refusing the config (an unknown key, a missing argument: the user's to fix)."""
    tb = err.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and Path(last).resolve().is_relative_to(PACKAGE_DIR)


def _instantiate(node: Any, what: str, **kwargs: Any) -> Any:
    """hydra.utils.instantiate with one-line errors for config mistakes. A ZooError from the constructor
    passes through; any other exception raised inside the zoo's own code is a bug and keeps its traceback."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except ZooError:
        raise
    except Exception as err:  # Hydra wraps the real error; show its last line, with the config key
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ZooError):
            raise cause from None
        if _raised_in_zoo(cause):
            raise cause from None
        message = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        raise ZooError(f"{what}: {message}") from err


def instantiate_group(cfg: DictConfig | None, what: str) -> list[Any]:
    """Instantiate every entry of a callbacks/logger group; `null` entries are switched off."""
    if not cfg:
        return []
    return [
        _instantiate(node, f"{what}.{name}")
        for name, node in cfg.items()
        if node is not None and "_target_" in node
    ]


def build(cfg: DictConfig) -> tuple[Any, pl.LightningModule, pl.Trainer]:
    """Datamodule, model (reading what it needs from the datamodule) and trainer for a config."""
    check_family(cfg)
    check_precision(cfg)
    datamodule = _instantiate(cfg.data, "data")
    datamodule.prepare_data()  # idempotent; the model needs its results (vocab size, schema, ...)
    # Plain containers, not DictConfigs: hyperparameters must load with torch.load(weights_only=True).
    model = _instantiate(cfg.model, "model", _convert_="all", **datamodule.model_kwargs())
    if cfg.get("monitor") is None:
        cfg.monitor = model.monitor
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    from zoo.core.callbacks import RNGState, StoreConfig
    from zoo.core.checkpoint import AtomicCheckpointIO

    callbacks.append(RNGState())  # exact resume is not optional

    run_keys = [k for k in cfg if k != "hydra"]  # composed-from-Python configs carry Hydra's own section
    callbacks.append(StoreConfig(OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, run_keys), resolve=True)))
    if cfg.trainer.get("enable_progress_bar") is False:  # Lightning refuses a progress bar callback then
        from lightning.pytorch.callbacks import ProgressBar

        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = instantiate_group(cfg.get("logger"), "logger")
    if not loggers:  # LearningRateMonitor refuses to run without a logger; nothing to log it to anyway
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = _instantiate(
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    return datamodule, model, trainer


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint `cfg.ckpt_path` names (file, run folder, `last`, `auto`), checked before training: it
    must load with weights_only=True and come from a run with the same model, data and batch layout."""
    from zoo.core.checkpoint import check_resume_compatible, load_checkpoint, resolve_ckpt_path

    output_dir = Path(cfg.paths.output_dir)
    runs_root = output_dir.parent if output_dir.parent.name == "runs" else None
    path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir, runs_root)
    if path is None:
        return None
    import yaml

    from zoo.core.family import registry
    from zoo.core.trust import check_hyper_parameters, check_stored_config, targets_in, trusted_packages

    checkpoint = load_checkpoint(path, mmap=True)  # mmap: the check does not read the tensors
    run_keys = [k for k in cfg if k != "hydra"]  # as StoreConfig saved it
    current = OmegaConf.to_container(OmegaConf.masked_copy(cfg, run_keys), resolve=True)
    # Resuming builds nothing from the stored config (this run's own config is built, and its model and data
    # must equal the stored ones), but a checkpoint whose model or data names code is refused all the same.
    # Stored callbacks and loggers are never read on resume (a run killed by a test callback resumes without it).
    saved = yaml.safe_load(checkpoint.get("zoo_config") or "") or {}
    packages = trusted_packages(registry())
    if isinstance(saved, dict):
        stored = {k: saved.get(k) for k in ("model", "data")}
        check_stored_config(stored, f"ckpt_path={path}", packages, also=targets_in(current))
    check_hyper_parameters(checkpoint, f"ckpt_path={path}", packages)
    check_resume_compatible(checkpoint.get("zoo_config", ""), current, path)
    print(f"[zoo] resuming from {path} (step {checkpoint.get('global_step')})", flush=True)
    return path


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def teardown_distributed() -> None:
    """Leave no process group behind: gloo sometimes aborts at interpreter exit otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
