"""The TFT LightningModule: pytorch-forecasting's `TemporalFusionTransformer` (built with
`from_dataset`) inside the zoo's module conventions.

The network is a child module rather than the LightningModule itself, so that:
- hyperparameters are plain containers (dataset parameters encoded by `zoo.tft.params`), which the zoo
  needs to load checkpoints with ``torch.load(weights_only=True)`` — pytorch-forecasting's own
  checkpoints pickle normalizers, losses and encoders;
- metric names, the LR schedule and the checkpoint monitor follow the zoo (``train/loss``,
  ``val/loss``, ReduceLROnPlateau on ``val/loss``), whatever pytorch-forecasting version is installed.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from zoo.core.callbacks import log_grad_norm
from zoo.core.errors import ZooError
from zoo.core.family import ZooModule
from zoo.core.optim import fused_adam
from zoo.tft import params as P
from zoo.tft.model import NetConfig, float32_lstms, mask_bias_for, skeleton_dataset

log = logging.getLogger(__name__)


@dataclass
class OptimConfig:
    """The TFT's optimizer settings (``model.optim``): Adam and ReduceLROnPlateau on ``val/loss``;
    conf/model/tft.yaml states the same defaults (a test keeps them equal)."""

    lr: float = 3e-3
    """Adam's learning rate (and the schedule's starting point)."""
    weight_decay: float = 0.0
    """Adam's (L2) weight decay."""
    reduce_on_plateau_patience: int = 4
    """Validation epochs without improvement before the LR is cut."""
    reduce_on_plateau_factor: float = 0.5
    """Factor of each LR cut."""
    min_lr: float = 1e-5
    """The LR is never cut below this."""

    def __post_init__(self) -> None:
        for key, ok, expected in (("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
                                  ("reduce_on_plateau_patience", self.reduce_on_plateau_patience >= 0, ">= 0"),
                                  ("reduce_on_plateau_factor", 0 < self.reduce_on_plateau_factor < 1, "in (0, 1)"),
                                  ("min_lr", self.min_lr >= 0, ">= 0")):  # fmt: skip
            if not ok:
                raise ZooError(f"model.optim.{key}={getattr(self, key)} must be {expected}")


def typed(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    """The settings dataclass `cls` from a config section; unknown keys are a one-line error naming them."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ZooError(f"{where}: unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
    try:
        return cls(**values)
    except TypeError as err:  # a value of the wrong kind compared with a number
        raise ZooError(f"{where}: {err}") from err


class TFTModule(ZooModule):
    """Trains a multi-target (or single-target) TFT with quantile losses.

    Args:
        dataset_parameters: the training `TimeSeriesDataSet`'s parameters, encoded by `zoo.tft.params`
            (given by the datamodule's ``model_kwargs()``).
        preprocess: resampling/feature settings of the data (given by the datamodule; kept with the
            model so prediction on new data repeats them).
        net: network settings (`zoo.tft.model.NetConfig`).
        quantiles: predicted quantiles (one QuantileLoss per target); must contain 0.1, 0.5 and 0.9.
        optim: optimizer settings (`OptimConfig`).
        precision: the trainer's precision; ``16-*`` switches to an fp16-safe attention mask bias.
        mask_bias: explicit attention mask bias (overrides the precision rule).
        plots: write/log forecast and interpretation figures when training ends.
        cpu_threads: torch intra-op threads when running on CPU (null: leave torch's default). 1 by
            default: 2 threads train the recipes 1.5x faster on an idle 2-core machine, but 15x slower than 1
            when another process keeps a core busy (docs/tft.md, "CPU threads").
        point: the point forecast read from the predicted quantiles: ``median`` (the 0.5 quantile, the
            MAE-optimal point) or ``mean`` (the mean of the distribution the quantiles describe, the
            MSE-optimal point; `zoo.tft.evaluate.quantile_mean`). It is what ``val/mae/*``, the
            evaluation's ``<target>/tft/*`` metrics and the backtest score.
        point_loss_weight: adds ``point_loss_weight x MSE(point forecast, actual)`` (per target, summed
            over targets like the quantile losses) to the quantile loss, in training and in ``val/loss``:
            for an MSE-scored benchmark. The quantiles are still trained (bands and coverage keep working);
            0 (default) trains the quantile loss alone.
        calibrate: when training ends, fit the band calibration (`zoo.tft.calibrate`) on the validation
            windows and store it in the best/last checkpoints and the export; evaluation, ``forecast()``,
            the figures and ``zoo.monitor`` then use calibrated quantiles.
        fused: compute the variable selections and the dropouts with fewer kernels (`zoo.tft.fused`):
            the same parameters and, up to float rounding, the same outputs as pytorch-forecasting's
            modules (dropout: the same rate, another random stream); false runs pytorch-forecasting's
            own forward passes.
    """

    family = "tft"
    monitor = "val/loss"
    how_to_predict = "python -m zoo.predict ckpt_path={folder} input=recent.csv"

    def __init__(
        self,
        dataset_parameters: dict[str, Any],
        preprocess: dict[str, Any] | None = None,
        net: dict[str, Any] | None = None,
        quantiles: list[float] | None = None,
        optim: dict[str, Any] | None = None,
        precision: str = "32-true",
        mask_bias: float | None = None,
        plots: bool = True,
        cpu_threads: int | None = 1,
        point: str = "median",
        point_loss_weight: float = 0.0,
        calibrate: bool = True,
        fused: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        from pytorch_forecasting import TemporalFusionTransformer
        from pytorch_forecasting.metrics import MultiLoss, QuantileLoss

        self.net_config: NetConfig = typed(NetConfig, net, "model.net")
        self.optim: OptimConfig = typed(OptimConfig, optim, "model.optim")
        self.quantiles = [float(q) for q in (quantiles or [0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98])]
        for q in (0.1, 0.5, 0.9):
            if not any(abs(q - v) < 1e-9 for v in self.quantiles):
                raise ZooError(
                    f"model.quantiles={self.quantiles} must contain 0.1, 0.5 and 0.9 (median and P10-P90 coverage)"
                )
        if sorted(self.quantiles) != self.quantiles or not all(0 < q < 1 for q in self.quantiles):
            raise ZooError(f"model.quantiles={self.quantiles} must be increasing and inside (0, 1)")
        if point not in ("median", "mean"):
            raise ZooError(f"model.point={point!r} must be 'median' or 'mean'")
        if not float(point_loss_weight) >= 0:
            raise ZooError(f"model.point_loss_weight={point_loss_weight} must be >= 0")
        self.point = str(point)
        self.point_loss_weight = float(point_loss_weight)
        self._mid = self.quantiles.index(next(v for v in self.quantiles if abs(v - 0.5) < 1e-9))
        self.preprocess = dict(preprocess or {})
        self.dataset_parameters = P.decode(dataset_parameters)
        targets = self.dataset_parameters["target"]
        self.target_names = list(targets) if isinstance(targets, list) else [targets]
        self.multi_target = isinstance(targets, list)
        self.mask_bias = mask_bias_for(precision, mask_bias)
        skeleton = skeleton_dataset(self.dataset_parameters)
        loss = (
            MultiLoss([QuantileLoss(self.quantiles) for _ in self.target_names])
            if self.multi_target
            else QuantileLoss(self.quantiles)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # from_dataset warns about its own hparams handling
            self.net = TemporalFusionTransformer.from_dataset(
                skeleton,
                loss=loss,
                learning_rate=self.optim.lr,
                log_interval=-1,
                logging_metrics=nn.ModuleList([]),
                reduce_on_plateau_patience=self.optim.reduce_on_plateau_patience,
                mask_bias=self.mask_bias,
                **asdict(self.net_config),
            )
        float32_lstms(self.net)
        if fused:
            from zoo.tft.fused import fuse

            fuse(self.net)
        self.encoder_length = int(self.dataset_parameters["max_encoder_length"])
        self.prediction_length = int(self.dataset_parameters["max_prediction_length"])
        # Evaluation means are torchmetrics states (float sums of value x windows, and windows) reduced over
        # ranks once per epoch. `self.log(sync_dist=True, batch_size=n)` is not exact under DDP: Lightning
        # averages its integer window count over ranks with an integer division on gloo (129 windows over 2
        # ranks count as 128), and DDP shards evaluation windows unevenly. A list, not a dict: target names
        # come from user data and may contain dots.
        self.eval_loss = MeanMetric()
        self.eval_mae = nn.ModuleList([MeanMetric() for _ in self.target_names])
        self.calibration: Any = None  # zoo.tft.calibrate.Calibration of the current weights, or None

    # -- steps -----------------------------------------------------------------------------------------
    def forward(self, x: dict[str, Any]) -> dict[str, Any]:
        return self.net(x)

    def batch_stats(self, batch: Any) -> tuple[int, int]:
        n = int(batch[0]["encoder_lengths"].shape[0])
        return n, n * (self.encoder_length + self.prediction_length)

    def _loss(self, x: dict[str, Any], y: Any, out: dict[str, Any]) -> torch.Tensor:
        from pytorch_forecasting.metrics import MultiLoss

        if isinstance(self.net.loss, MultiLoss):
            loss = self.net.loss(
                out["prediction"], y, encoder_target=x["encoder_target"], encoder_lengths=x["encoder_lengths"]
            )
        else:
            loss = self.net.loss(out["prediction"], y)
        if self.point_loss_weight > 0:
            actual = y[0] if self.multi_target else [y[0]]
            point = sum(
                torch.nn.functional.mse_loss(p, a.to(p.dtype))
                for p, a in zip(self.point_forecast(out), actual)
            )
            loss = loss + self.point_loss_weight * point
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.net(x)
        loss = self._loss(x, y, out)
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            batch_size=len(x["encoder_lengths"]),
        )
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        log_grad_norm(self)

    def _eval_step(self, batch: Any) -> None:
        x, y = batch
        out = self.net(x)
        # Every window has prediction_length targets, so a batch mean weighted by its windows is exact.
        n = len(x["encoder_lengths"])
        self.eval_loss.update(self._loss(x, y, out).detach(), weight=n)
        point = self.point_forecast(out)
        actual = y[0] if self.multi_target else [y[0]]
        for metric, pred, act in zip(self.eval_mae, point, actual):
            metric.update((pred - act).abs().mean(), weight=n)

    def _eval_epoch_end(self, stage: str) -> None:
        # compute() sums the states over ranks: every rank must call it, even one that had no batch.
        loss = self.eval_loss.compute()
        maes = {f"{stage}/mae/{name}": m.compute() for name, m in zip(self.target_names, self.eval_mae)}
        self.eval_loss.reset()
        for metric in self.eval_mae:
            metric.reset()
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=False)
        self.log_dict(maes, sync_dist=False)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # -- predictions -----------------------------------------------------------------------------------
    def quantile_forecast(self, out: dict[str, Any]) -> list[torch.Tensor]:
        """(batch, prediction_length, n_quantiles) per target, in the data's units."""
        q = out["prediction"]
        return [t.float() for t in q] if self.multi_target else [q.float()]

    def point_forecast(self, out: dict[str, Any]) -> list[torch.Tensor]:
        """(batch, prediction_length) per target: the median or the quantiles' mean (``point``)."""
        return [self.point_of(q) for q in self.quantile_forecast(out)]

    def calibrated(self, qs: list[torch.Tensor], channels: list[str] | None = None) -> list[torch.Tensor]:
        """Quantiles [N, P, L] per target with the band calibration applied (unchanged without one);
        `channels`: each window's channel, for channel-independent models."""
        if self.calibration is None:
            return qs
        return [self.calibration.apply(q, name, channels) for q, name in zip(qs, self.target_names)]

    def point_of(self, q: torch.Tensor) -> torch.Tensor:
        """The point forecast from quantile forecasts [..., n_quantiles]."""
        if self.point == "mean":
            from zoo.tft.evaluate import quantile_mean

            return quantile_mean(q, self.quantiles)
        return q[..., self._mid]

    @torch.no_grad()
    def predict_batches(
        self, batches: Any, batch_size: int = 256, limit: int | None = None
    ) -> dict[str, Any]:
        """Quantile forecasts and actuals for the windows of a `WindowBatches` (eval mode, no grad)."""
        was_training = self.training
        self.eval()
        n = len(batches) if limit is None else min(limit, len(batches))
        preds: list[list[torch.Tensor]] = [[] for _ in self.target_names]
        actual: list[list[torch.Tensor]] = [[] for _ in self.target_names]
        for start in range(0, n, batch_size):
            x, y = batches.__getitems__(list(range(start, min(n, start + batch_size))))
            x = {
                k: ([t.to(self.device) for t in v] if isinstance(v, list) else v.to(self.device))
                for k, v in x.items()
            }
            out = self.net(x)
            for t, q in enumerate(self.quantile_forecast(out)):
                preds[t].append(q.cpu())
            for t, a in enumerate(y[0] if self.multi_target else [y[0]]):
                actual[t].append(a.float().cpu())
        self.train(was_training)
        return {
            "quantiles": [torch.cat(p) for p in preds],
            "actual": [torch.cat(a) for a in actual],
            "n": n,
        }

    # -- optimization ----------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim
        optimizer = torch.optim.Adam(
            self.parameters(), lr=o.lr, weight_decay=o.weight_decay, fused=fused_adam(self)
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=o.reduce_on_plateau_factor,
            patience=o.reduce_on_plateau_patience,
            min_lr=o.min_lr,
        )
        # Stepped after each validation epoch; strict=False because a run may validate less often.
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": "val/loss",
                "interval": "epoch",
                "frequency": 1,
                "strict": False,
            },
        }

    def _cpu_threads(self) -> None:
        if self.hparams.cpu_threads and self.device.type == "cpu":
            if getattr(self, "_saved_threads", None) is None:
                self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(int(self.hparams.cpu_threads))

    def _restore_threads(self) -> None:
        # Leave the process as found: other models trained in the same process (tests, notebooks) may want more.
        if getattr(self, "_saved_threads", None) is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    def on_fit_start(self) -> None:
        self._cpu_threads()
        # A table fitted for other weights (a resumed checkpoint's) must not ride into new checkpoints.
        self.calibration = None

    def on_validation_start(self) -> None:
        self._cpu_threads()

    def on_test_start(self) -> None:
        self._cpu_threads()

    def on_test_end(self) -> None:
        self._restore_threads()

    # -- end of training: figures ----------------------------------------------------------------------
    def on_fit_end(self) -> None:
        try:
            self._fit_calibration()
            self._write_figures()
        finally:
            self._restore_threads()

    # -- end of training: band calibration -----------------------------------------------------------------
    def _calibration_data(self) -> Any:
        trainer = self.trainer
        if not self.hparams.get("calibrate", True) or trainer is None or trainer.sanity_checking:
            return None
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "batches") or getattr(trainer, "fast_dev_run", False):
            return None
        return dm

    def _fit_calibration(self) -> None:
        """Fit the calibration of the final weights on the validation windows (every rank: each holds the
        whole table, so an export or a test from any rank agrees), then rewrite the best and last
        checkpoints with the table of their own weights (rank 0), atomically."""
        from zoo.tft.calibrate import fit_module

        dm = self._calibration_data()
        if dm is None:
            return
        try:
            self.calibration = fit_module(self, dm, "val")
        except Exception as err:  # a calibration must never lose a finished training run
            log.warning("[zoo] TFT band calibration failed, bands stay uncalibrated: %s", err)
            return
        if self.trainer.global_rank == 0:
            self._calibrate_checkpoints(dm)

    def _calibrate_checkpoints(self, dm: Any) -> None:
        from zoo.core.checkpoint import atomic_torch_save, load_checkpoint
        from zoo.tft.calibrate import fit_module

        paths: list[Path] = []
        for cb in self.trainer.checkpoint_callbacks:
            for p in [*getattr(cb, "best_k_models", {}), getattr(cb, "last_model_path", "")]:
                if p and "://" not in str(p) and Path(p).is_file() and Path(p).resolve() not in paths:
                    paths.append(Path(p).resolve())
        current = {k: v.detach().clone() for k, v in self.state_dict().items()}
        final = self.calibration
        try:
            for path in paths:
                ckpt = load_checkpoint(path)
                state = ckpt["state_dict"]
                same = state.keys() <= current.keys() and all(
                    torch.equal(v.cpu(), current[k].cpu()) for k, v in state.items()
                )
                if same:
                    table = final
                else:  # the best checkpoint's weights are older than the final ones: their own table
                    self.load_state_dict(state, strict=False)
                    table = fit_module(self, dm, "val")
                ckpt["tft_calibration"] = table.to_state()
                atomic_torch_save(ckpt, path)
        except Exception as err:
            log.warning("[zoo] TFT calibration could not be written into the checkpoints: %s", err)
        finally:
            self.load_state_dict(current, strict=False)
            self.calibration = final

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.calibration is not None:
            checkpoint["tft_calibration"] = self.calibration.to_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from zoo.tft.calibrate import Calibration

        state = checkpoint.get("tft_calibration")
        self.calibration = Calibration.from_state(state, "checkpoint tft_calibration") if state else None
        if self.calibration is not None:
            self.calibration.check(self.quantiles, self.target_names, self.prediction_length, "checkpoint")

    def _write_figures(self) -> None:
        if (
            not self.hparams.plots
            or self.trainer is None
            or self.trainer.global_rank != 0
            or self.trainer.sanity_checking
        ):
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "batches") or getattr(self.trainer, "fast_dev_run", False):
            return
        from zoo.tft.evaluate import write_figures

        try:
            write_figures(
                self,
                dm,
                "val",
                Path(self.trainer.default_root_dir) / "plots",
                loggers=self.trainer.loggers,
                step=self.global_step,
            )
        except Exception as err:  # figures must never lose a finished training run
            log.warning("[zoo] TFT figures failed: %s", err)

    # -- persistence / evaluation ----------------------------------------------------------------------
    @classmethod
    def from_export(cls, export_dir: str | Path, map_location: str = "cpu") -> TFTModule:
        """The module of an export folder (config.json + model.safetensors), in eval mode."""
        from zoo.tft.calibrate import Calibration
        from zoo.tft.export import load_weights, read_config

        module = cls(**read_config(export_dir)["hparams"])
        load_weights(module.net, export_dir, map_location)
        module.calibration = Calibration.load_json(export_dir)
        if module.calibration is not None:
            module.calibration.check(
                module.quantiles, module.target_names, module.prediction_length, str(export_dir)
            )
        return module.eval()

    def export(self, out_dir: str | Path, datamodule: Any = None, format: str = "safetensors") -> Path:
        """model.safetensors + config.json (dataset parameters, normalizers, preprocessing): enough to
        predict with `TFTModule.from_export` + `zoo.tft.predict.forecast` without the training data.
        ``format=onnx`` adds model.onnx (`zoo.tft.export.save_onnx`), checked against this network."""
        from zoo.core.family import check_export_format
        from zoo.tft.calibrate import FILE
        from zoo.tft.export import ONNX_FILE, save, save_onnx

        check_export_format(format)
        folder = Path(save(self, out_dir))
        if self.calibration is not None:
            self.calibration.save_json(folder)
        else:  # re-exporting an uncalibrated module over an export must not keep the old table
            (folder / FILE).unlink(missing_ok=True)
        if format == "onnx":
            save_onnx(self, folder)
        else:  # a model.onnx left by an earlier export would no longer match these weights
            (folder / ONNX_FILE).unlink(missing_ok=True)
        return folder

    def forecast(self, df: Any, **kwargs: Any) -> Any:
        """Calibrated quantile forecasts of the next steps of every series in `df` (`zoo.tft.predict.forecast`):
        the Python API the monitor uses, reached through `load_run` like every other entry point."""
        from zoo.tft.predict import forecast

        return forecast(self, df, **kwargs)

    @classmethod
    def collect(cls, cfg: Any) -> int:
        """``python -m zoo.collect``: this machine's metrics in the layout ``data=tft/file`` reads."""
        from zoo.tft.collect import collect

        return collect(cfg)

    @classmethod
    def watch(cls, cfg: Any) -> dict[str, int]:
        """``python -m zoo.monitor``: forecast this machine live, flag actuals outside their bands."""
        from zoo.tft.monitor import watch

        return watch(cfg)

    def serve_api(self, settings: dict[str, Any], run: Any) -> Any:
        """``python -m zoo.serve``: the TFT's HTTP API (`zoo.tft.serve`)."""
        from zoo.tft.serve import serve_api

        return serve_api(self, settings, run)

    def predict(self, cfg: Any, output_dir: Path, run: Any) -> Any:
        """``python -m zoo.predict input=recent.csv``: forecast.csv (+ forecast.png), see `zoo.tft.predict`."""
        from zoo.tft.predict import predict_command

        return predict_command(self, cfg, Path(output_dir), run)

    def evaluate(self, datamodule: Any, trainer: Any, cfg: Any, output_dir: str | Path) -> dict[str, float]:
        from zoo.tft.evaluate import evaluate_module

        self._cpu_threads()
        split = str(cfg.get("split", "val")) if cfg is not None else "val"
        backtest = int(cfg.get("backtest_cutoffs", 4)) if cfg is not None else 4
        try:
            return evaluate_module(self, datamodule, split, Path(output_dir), backtest_cutoffs=backtest)
        finally:
            self._restore_threads()
