"""The one contract between the core and a model family, and the registry the entry points use.

A family is a subpackage (``zoo.gpt``, ``zoo.events``, ``zoo.tft``, or a third-party package) whose
LightningModule subclasses `ZooModule`. The core calls nothing on a module but the hooks named here;
each has a default, so a family overrides only what it offers. Families are found by name through
`family(name)`: the built-in table in `zoo.families` plus any ``zoo.families`` entry point of an
installed package (``[project.entry-points."zoo.families"] mine = "my_pkg.module:MyModule"``).

`load_run(path)` turns what a user points an entry point at (a ``.ckpt``, a run folder, an export
folder) into a `Run`: the stored config, the family's module class and the loaded module.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import lightning.pytorch as pl
import torch

from zoo.core.errors import ZooError
from zoo.core.registry import registry  # noqa: F401  (re-exported: the registry is part of the contract)

if TYPE_CHECKING:
    from omegaconf import DictConfig

EXPORT_FORMATS = ("safetensors", "onnx", "hf")
EXPORT_MARKER = "zoo.json"  # written last into every export folder: family, formats, config


class ZooModule(pl.LightningModule):
    """Base LightningModule of every family: the hooks the core calls, with their defaults."""

    family: ClassVar[str] = ""
    """Registry name of the family (``gpt``, ``events``, ``tft``): set by each family's module class."""
    monitor: ClassVar[str] = "val/loss"
    """Metric the checkpoint callback, early stopping and sweeps read when the config sets no ``monitor``."""
    export_formats: ClassVar[tuple[str, ...]] = ("safetensors", "onnx")
    """The ``format=`` values `export` writes (a subset of `EXPORT_FORMATS`); others are refused in one line."""
    flops_per_token: float | None = None
    """Training FLOPs (forward + backward) per token, for the Throughput callback's MFU; None: no MFU."""
    how_to_predict: ClassVar[str] = "python -m zoo.predict ckpt_path={folder}"
    """The prediction command an export's model card shows (``{folder}``: the export folder)."""
    generates: ClassVar[bool] = False
    """Whether `predict` samples text continuations of prompts: ``zoo.generate`` (an alias of ``zoo.predict``
    with conf/generate.yaml's keys) takes this family's runs."""

    def batch_stats(self, batch: Any) -> tuple[int, int]:
        """(samples, tokens) in a training batch, for the Throughput callback; default: tokens == samples."""
        return len(batch), len(batch)

    def check_data(self, datamodule: Any, where: str) -> None:
        """Refuse, in one line naming `where`, data this trained module cannot read (other tokenizer, other
        vocabulary, other columns). Called by ``zoo.eval`` before evaluating; default: accept."""

    def evaluate(
        self, datamodule: Any, trainer: pl.Trainer, cfg: DictConfig, output_dir: Path
    ) -> dict[str, float]:
        """``python -m zoo.eval``: metrics of the split ``cfg.split`` (baselines, backtests and plots where the
        family has them). Default: Lightning's validate/test loop and the metrics it logs."""
        run = trainer.test if cfg.get("split") == "test" else trainer.validate
        results = run(self, datamodule=datamodule)
        return metric_values(results[0] if results else {})

    def export(self, out_dir: str | Path, datamodule: Any = None, format: str = "safetensors") -> Path:
        """Write a self-contained export folder (weights + the config/tokenizer/vocab/normalizer files the
        family needs; ``format=onnx`` adds ``model.onnx``) and return it. Default: nothing to export."""
        raise ZooError(f"the {self.family or type(self).__name__} family has no export")

    @classmethod
    def from_export(cls, folder: str | Path, map_location: str = "cpu") -> ZooModule:
        """The module of an export folder written by `export`, in eval mode."""
        raise ZooError(f"{folder}: the {cls.family or cls.__name__} family cannot load exports")

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        # Lightning's mixed-precision plugin refuses to clip for any optimizer that could unscale gradients
        # itself (fused Adam/AdamW: `zoo.core.optim.fused_adam`), fearing scaled gradients. Without a grad
        # scaler (bf16-mixed, 32-true) the gradients are already true: clip them here instead of giving up
        # the fused kernel.
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if gradient_clip_val and scaler is None and getattr(optimizer, "_step_supports_amp_scaling", False):
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def predict(self, cfg: DictConfig, output_dir: Path, run: Run) -> Any:
        """``python -m zoo.predict``: predictions for the request in `cfg` (the predict config's keys:
        ``prompt``/``input``/``output``/``backend``...), written where `cfg` says or under `output_dir`."""
        raise ZooError(f"the {self.family or type(self).__name__} family has no predict command")

    @classmethod
    def collect(cls, cfg: DictConfig) -> Any:
        """``python -m zoo.collect family=<name>``: sample this machine into data the family trains on
        (conf/collect.yaml's keys), until ``samples`` or Ctrl-C. Default: the family has no collector."""
        raise ZooError(f"family={cls.family}: the {cls.family or cls.__name__} family has no collector")

    @classmethod
    def watch(cls, cfg: DictConfig) -> Any:
        """``python -m zoo.monitor family=<name>``: load the run ``cfg`` names (``export=``/``ckpt_path=``)
        and forecast this machine live as its samples arrive (conf/monitor.yaml's keys). Default: the
        family has no live monitor."""
        raise ZooError(f"family={cls.family}: the {cls.family or cls.__name__} family has no live monitor")

    def serve_api(self, settings: dict[str, Any], run: Run) -> Any:
        """``python -m zoo.serve``: the family's HTTP API, a `zoo.core.serving.ZooAPI` (LitServe's LitAPI
        with a `ZooSpec` that owns its routes), built from the serve config's keys (`settings`: limits,
        batching, backend) for the loaded `run`. Default: the family cannot be served."""
        raise ZooError(f"the {self.family or type(self).__name__} family has no HTTP API")


def metric_values(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float | torch.Tensor) and torch.as_tensor(v).numel() == 1
    }


@dataclass
class Run:
    """What an entry point was pointed at, loaded."""

    path: Path
    """The checkpoint file or export folder that was loaded."""
    kind: str
    """``checkpoint`` or ``export``."""
    family: str
    """Registry name of the family."""
    cls: type[ZooModule]
    """The family's module class."""
    module: ZooModule
    """The loaded module, in eval mode, on the CPU."""
    config: DictConfig
    """The training run's composed config (as stored in the checkpoint or the export's zoo.json)."""
    checkpoint: dict[str, Any] | None = None
    """The raw checkpoint (weights_only load) when `kind` is ``checkpoint``."""

    @property
    def export_dir(self) -> Path | None:
        return self.path if self.kind == "export" else None


def family(name: str) -> type[ZooModule]:
    """The module class registered under `name`; a one-line error for an unknown name."""
    table = registry()
    if name not in table:
        raise ZooError(f"unknown family {name!r}: expected one of {', '.join(sorted(table))}")
    module, _, attr = table[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, ZooModule)):
        raise ZooError(f"family {name!r}: {table[name]} is not a zoo.core.family.ZooModule")
    return cls


def family_of_class(cls: Any, what: str) -> str:
    """The family a module or datamodule class declares (``family = "gpt"``)."""
    name = getattr(cls, "family", "") if isinstance(cls, type) else ""
    if not name:
        raise ZooError(f"{what}: {getattr(cls, '__qualname__', cls)} declares no zoo family")
    return str(name)


def target_class(node: Any, what: str) -> type:
    """The class a config node's ``_target_`` names, imported (Hydra's own resolution)."""
    from hydra.utils import get_class

    target = node.get("_target_") if node is not None else None
    if not target:
        raise ZooError(f"{what}: no _target_ (expected a config from conf/{what.split('.')[0]}/)")
    try:
        return get_class(str(target))
    except Exception as err:
        raise ZooError(f"{what}._target_={target}: cannot be imported ({type(err).__name__})") from err


def family_of_config(node: Any, what: str) -> str:
    """The family of a ``model``/``data`` config node."""
    return family_of_class(target_class(node, what), what)


def _saved_config(blob: Any, where: Path, key: str = "ckpt_path") -> DictConfig:
    from omegaconf import OmegaConf

    from zoo.core.trust import check_stored_config, trusted_packages

    if not blob:
        raise ZooError(f"{key}={where}: no zoo config inside (not written by python -m zoo.train)")
    config = OmegaConf.create(blob)
    check_stored_config(config, f"{key}={where}", trusted_packages(registry()))  # before anything is imported
    return config


def _load_checkpoint_run(path: Path, key: str = "ckpt_path") -> Run:
    from zoo.core.checkpoint import load_checkpoint
    from zoo.core.trust import check_hyper_parameters, trusted_packages

    checkpoint = load_checkpoint(path, key=key)
    config = _saved_config(checkpoint.get("zoo_config"), path, key)
    check_hyper_parameters(checkpoint, f"{key}={path}", trusted_packages(registry()))
    cls = target_class(config.get("model"), "model")
    name = family_of_class(cls, f"ckpt_path={path}")
    module = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    module.on_load_checkpoint(checkpoint)
    return Run(path, "checkpoint", name, cls, module.eval(), config, checkpoint)


def read_export_marker(folder: Path) -> dict[str, Any]:
    marker = folder / EXPORT_MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ZooError(f"{marker}: not a readable export marker ({type(err).__name__})") from err
    if not isinstance(info, dict) or "family" not in info:
        raise ZooError(f"{marker}: expected a JSON object with a 'family' key")
    return info


def _load_export_run(folder: Path, key: str = "ckpt_path") -> Run:
    from omegaconf import OmegaConf

    from zoo.core.trust import check_stored_config, trusted_packages

    info = read_export_marker(folder)
    config = OmegaConf.create(info.get("config") or {})
    check_stored_config(config, f"{key}={folder}", trusted_packages(registry()))  # before the family reads it
    cls = family(str(info["family"]))
    module = cls.from_export(folder)
    return Run(folder, "export", cls.family, cls, module.eval(), config)


def load_run(path: str | Path, key: str = "ckpt_path") -> Run:
    """Load a checkpoint (``.ckpt``), a run folder (its best checkpoint, else its last) or an export folder
    (one with ``zoo.json``). Errors are one line naming `key` and what was expected."""
    from zoo.core.checkpoint import best_checkpoint_of_run

    if path in (None, ""):
        raise ZooError(f"{key} is required: a .ckpt file, a run folder or an export folder")
    p = Path(str(path)).expanduser()
    if p.is_dir():
        if (p / EXPORT_MARKER).is_file():
            return _load_export_run(p, key)
        if (p / "export" / EXPORT_MARKER).is_file() and not (p / "checkpoints").is_dir():
            return _load_export_run(p / "export", key)
        ckpt = best_checkpoint_of_run(p)
        if ckpt is None:
            raise ZooError(
                f"{key}={p}: neither an export folder ({EXPORT_MARKER}) nor a run folder with checkpoints/*.ckpt"
            )
        return _load_checkpoint_run(ckpt, key)
    if not p.is_file():
        raise ZooError(
            f"{key}={p}: no such file or folder (expected a .ckpt, a run folder or an export folder)"
        )
    return _load_checkpoint_run(p, key)


def check_export_format(fmt: str) -> str:
    if fmt not in EXPORT_FORMATS:
        raise ZooError(f"format={fmt}: expected one of {', '.join(EXPORT_FORMATS)}")
    return fmt
