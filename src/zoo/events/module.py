"""The event predictor LightningModule: loss over fields, per-field metrics, optimizer recipes,
vocabulary in (and beside) the checkpoint, export, and the family's own evaluation (`evaluate`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.nn import ModuleDict
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from zoo.core.callbacks import log_grad_norm
from zoo.core.errors import ZooError
from zoo.core.family import ZooModule
from zoo.core.optim import fused_adam
from zoo.events.model import EventPredictor, NetConfig, objective
from zoo.events.schema import PAD, SPECIALS, UNK, Schema, Vocab


@dataclass
class OptimConfig:
    name: str = "adam"
    """adam | adamw."""
    lr: float = 1e-3
    """Learning rate."""
    weight_decay: float = 0.0
    """Weight decay (decoupled with adamw)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    scheduler: str | None = None
    """null (constant LR) | plateau (ReduceLROnPlateau on the monitored validation loss)."""
    factor: float = 0.5
    """ReduceLROnPlateau: LR multiplier."""
    patience: int = 3
    """ReduceLROnPlateau: validations without improvement before the LR drops."""


class EventModule(ZooModule):
    """Trains `zoo.events.model.EventPredictor`. Logs ``{train,val}/loss/mean`` (mean over fields of the
    per-field cross-entropy: the training objective), ``loss/sum`` (= n_fields x mean, the source report's
    number), ``loss/<field>``, ``acc/<field>`` and, with the time head, ``time_mae_days``."""

    family = "events"
    monitor = "val/loss/mean"
    how_to_predict = "python -m zoo.predict ckpt_path={folder} input=history.csv k=5"

    def __init__(
        self,
        net: dict[str, Any],
        optim: dict[str, Any],
        schema: dict[str, Any],
        vocab: dict[str, list[str]],
        src_seq_len: int,
        tgt_seq_len: int,
        time_loss_weight: float = 0.1,
        field_metrics_every: int | None = None,
        id_unk_rate: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        known = {f.name for f in fields(NetConfig)}
        if set(net) - known:
            raise ZooError(
                f"model.net: unknown keys {sorted(set(net) - known)}; expected some of {sorted(known)}"
            )
        try:
            self.net_cfg = NetConfig(**net)
        except ValueError as err:
            raise ZooError(f"model.net: {err}") from err
        if set(optim) - {f.name for f in fields(OptimConfig)}:
            raise ZooError(
                f"model.optim: unknown keys {sorted(set(optim) - {f.name for f in fields(OptimConfig)})}"
            )
        self.optim = OptimConfig(**{**optim, "betas": tuple(optim.get("betas", (0.9, 0.999)))})
        if self.optim.name not in ("adam", "adamw") or self.optim.scheduler not in (None, "plateau"):
            raise ZooError(
                f"model.optim: name={self.optim.name} (adam|adamw), scheduler={self.optim.scheduler} (null|plateau)"
            )
        self.schema = Schema.from_dict(schema)
        self.vocab = Vocab(vocab)
        self.vocab.check_matches(
            {f.name: len(vocab.get(f.name, [])) for f in self.schema.fields}, "model.vocab"
        )
        self.names = self.schema.names
        if not 0.0 <= float(id_unk_rate) < 1.0:
            raise ZooError(f"model.id_unk_rate={id_unk_rate}: expected a probability in [0, 1)")
        self.id_unk_rate = float(id_unk_rate)
        # Fields whose new values (staff, customers) show up as <unk> after training.
        self.register_buffer(
            "id_fields", torch.tensor([f.id for f in self.schema.fields], dtype=torch.bool), persistent=False
        )
        sizes = [len(vocab[n]) for n in self.names]
        self.net = EventPredictor(
            self.net_cfg, sizes, [f.stream for f in self.schema.fields], src_seq_len, tgt_seq_len
        )
        self.time_loss_weight = float(time_loss_weight) if self.net_cfg.time_head else 0.0
        self.field_metrics_every = field_metrics_every
        self._fields_logged_at = -1  # several batches share a step under gradient accumulation
        self.eval_acc = ModuleDict(
            {
                n: MulticlassAccuracy(num_classes=v, average="micro", ignore_index=PAD, validate_args=False)
                for n, v in zip(self.names, sizes)
            }
        )
        self.eval_loss = ModuleDict({n: MeanMetric() for n in self.names})
        self.eval_mae = MeanMetric()
        self.eval_next_acc = MeanMetric()

    # -- steps -----------------------------------------------------------------------------------------
    def forward(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor):
        return self.net(src, src_len, tgt_in)

    def batch_stats(self, batch: dict[str, Any]) -> tuple[int, int]:
        """(samples, target events) of a batch, for the Throughput callback (events/s)."""
        return batch["tgt"].shape[0], int(batch["n_events"]) if "n_events" in batch else batch["tgt"][
            ..., 0
        ].ne(PAD).sum().item()

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        return objective(self.net, batch, self.time_loss_weight)

    def _global_batch_loss(self, batch: dict[str, torch.Tensor], out: dict[str, Any]) -> torch.Tensor:
        """This rank's loss rescaled so that DDP's gradient average is the gradient of the mean over the
        whole global batch's target events, as one process with the same global batch computes it.

        DDP averages the ranks' gradients, i.e. weighs every rank's per-event mean equally; the ranks'
        batches hold different numbers of target events (windows end with their case), so the plain
        average would over-weight the events of the rank with fewer. Weighting each rank's mean by
        world_size x its events / all ranks' events makes the average exact.
        """
        counts = torch.stack([batch["tgt"][..., 0].ne(PAD).sum(), (~torch.isnan(batch["dt"])).sum()]).float()
        totals = self.trainer.strategy.reduce(counts.clone(), reduce_op="sum")
        share = counts * self.trainer.world_size / totals.clamp(min=1)
        loss = out["mean"] * share[0]
        if "time_loss" in out:
            loss = loss + self.time_loss_weight * out["time_loss"] * share[1]
        return loss

    def _unk_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training inputs with each `id` field value replaced by <unk> at rate ``id_unk_rate``: every
        value is known in training, so without this the model never learns what an unknown one means, yet
        a drifting log brings new ones (Helpdesk's test split: 978 resources never seen in training)."""
        if not self.id_unk_rate or not bool(self.id_fields.any()):
            return batch
        out = dict(batch)
        for key in ("src", "tgt_in"):
            ids = batch[key]
            hit = (
                (torch.rand(ids.shape, device=ids.device) < self.id_unk_rate)
                & self.id_fields
                & (ids >= len(SPECIALS))
            )
            out[key] = ids.masked_fill(hit, UNK)
        return out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        batch = self._unk_inputs(batch)
        loss, out = self._step(batch)
        if self.trainer.world_size > 1:
            loss = self._global_batch_loss(batch, out)
        every = self.field_metrics_every or self.trainer.log_every_n_steps
        # Lightning's own cadence: it writes when (step + 1) % log_every_n_steps == 0, under that step, so
        # logging on other batches would only compute values nobody writes. Step 0 logs the loss as well,
        # so that the progress bar and a one-step fast_dev_run have a value at once.
        due = bool(every) and (self.global_step + 1) % every == 0
        if due or self.global_step == 0:
            self.log_dict(
                {"train/loss/mean": out["mean"], "train/loss/sum": out["sum"]}, on_step=True, on_epoch=False
            )
        if due and self.global_step != self._fields_logged_at:
            self._fields_logged_at = self.global_step
            self._log_train_fields(batch, out)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        log_grad_norm(self)  # train/grad_norm, as the other families log it

    @torch.no_grad()
    def _log_train_fields(self, batch: dict[str, torch.Tensor], out: dict[str, Any]) -> None:
        """Per-field train loss and accuracy, written straight to the loggers as one stacked tensor.

        Going through `self.log` costs ~0.7 ms per value in Lightning's result collection; with 34+ values
        per logged step that alone made the zoo 1.16x slower than a plain loop (the events benchmark).
        Step-level train metrics are rank-local in Lightning too, so rank 0 writing its own is the same.
        """
        if not self.loggers or not self.trainer.is_global_zero:
            return
        valid = batch["tgt"][..., 0] != PAD
        acc = torch.stack(
            [
                (out["logits"][i].argmax(-1) == batch["tgt"][..., i])[valid].float().mean()
                for i in range(len(self.names))
            ]
        )
        parts = [out["per_field"].detach().float(), acc]
        names = [f"train/loss/{n}" for n in self.names] + [f"train/acc/{n}" for n in self.names]
        if "time_loss" in out:
            parts.append(out["time_loss"].detach().float().reshape(1))
            names.append("train/time_l1_log")
        values = torch.cat(parts).tolist()
        for logger in self.loggers:
            logger.log_metrics(dict(zip(names, values)), step=self.global_step)

    def _eval_step(self, batch: dict[str, torch.Tensor]) -> None:
        _, out = self._step(batch)
        n_valid = batch["tgt"][..., 0].ne(PAD).sum()
        for i, n in enumerate(self.names):
            self.eval_loss[n].update(out["per_field"][i], weight=n_valid)
            self.eval_acc[n].update(out["logits"][i].argmax(-1).flatten(), batch["tgt"][..., i].flatten())
        target = self.names.index(self.schema.target)
        first = out["logits"][target][:, 0].argmax(-1) == batch["tgt"][:, 0, target]
        self.eval_next_acc.update(first.float())
        if "err_days" in out and out["err_days"].numel():
            self.eval_mae.update(out["err_days"])

    def _eval_epoch_end(self, prefix: str) -> None:
        metrics = {}
        losses = []
        for n in self.names:
            losses.append(self.eval_loss[n].compute())
            metrics[f"{prefix}/loss/{n}"] = losses[-1]
            metrics[f"{prefix}/acc/{n}"] = self.eval_acc[n].compute()
            self.eval_loss[n].reset()
            self.eval_acc[n].reset()
        stacked = torch.stack(losses)
        metrics[f"{prefix}/loss/mean"] = stacked.mean()
        metrics[f"{prefix}/loss/sum"] = stacked.sum()
        # Position 0 of every sample = the next event after each prefix (the evaluation protocol).
        metrics[f"{prefix}/next_acc"] = self.eval_next_acc.compute()
        self.eval_next_acc.reset()
        if self.net_cfg.time_head and self.eval_mae.update_count:
            metrics[f"{prefix}/time_mae_days"] = self.eval_mae.compute()
        self.eval_mae.reset()
        self.log_dict(metrics, prog_bar=False)
        self.log(f"{prefix}/loss", metrics[f"{prefix}/loss/mean"], prog_bar=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # -- optimization ----------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        cfg = self.optim
        cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        optimizer = cls(
            self.parameters(),
            lr=cfg.lr,
            betas=cfg.betas,
            weight_decay=cfg.weight_decay,
            fused=fused_adam(self),
        )
        if cfg.scheduler is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.factor, patience=cfg.patience
        )
        # Stepped after each validation on the loss the checkpoint watches.
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": self.monitor,
                "interval": "epoch",
                "strict": False,
            },
        }

    # -- persistence -----------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self._write_vocab_beside_checkpoints()

    @rank_zero_only
    def _write_vocab_beside_checkpoints(self) -> None:
        ckpt = self.trainer.checkpoint_callback if self.trainer is not None else None
        dirpath = getattr(ckpt, "dirpath", None)
        if dirpath:
            Path(dirpath).mkdir(parents=True, exist_ok=True)
            (Path(dirpath) / "vocab.json").write_text(self.vocab.to_json())
            (Path(dirpath) / "schema.json").write_text(json.dumps(self.schema.to_dict(), indent=1))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["zoo_vocab"] = self.vocab.tokens

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("zoo_vocab")
        if saved is not None and Vocab(saved) != self.vocab:
            raise ZooError(
                "checkpoint: its stored vocabulary differs from its hyperparameters' (a corrupted or hand-edited checkpoint)"
            )

    def check_vocab(self, vocab: Vocab, where: str) -> None:
        """Refuse data encoded with another vocabulary than this model's (ids would mean other values)."""
        vocab.check_matches(self.vocab.sizes(), where)
        if vocab != self.vocab:
            differ = [n for n in self.names if vocab.tokens.get(n) != self.vocab.tokens.get(n)]
            raise ZooError(
                f"{where}: the vocabulary does not match the checkpoint (tokens differ for fields {differ[:5]})"
            )

    def export(self, out_dir: str | Path, datamodule: Any = None, format: str = "safetensors") -> Path:
        """model.safetensors + config.json + vocab.json + schema.json (loadable with `zoo.events.export.load`
        or `from_export`); ``format=onnx`` adds model.onnx, checked against this network."""
        from zoo.events.export import ONNX_FILE, save, save_onnx

        folder = save(self.net, self.vocab, self.schema, out_dir)
        if format == "onnx":
            save_onnx(self.net, self.names, folder)
        else:  # a model.onnx of an earlier export would no longer match these weights
            (folder / ONNX_FILE).unlink(missing_ok=True)
        return folder

    @classmethod
    def from_export(cls, folder: str | Path, map_location: str = "cpu") -> EventModule:
        """The module of an export folder (model.safetensors + config.json + vocab.json + schema.json), in
        eval mode; optimizer and loss settings from the run's config in zoo.json where there is one."""
        from zoo.core.family import EXPORT_MARKER, read_export_marker
        from zoo.events.export import load_weights, read_export

        folder = Path(folder)
        cfg, vocab, schema = read_export(folder)
        marker = read_export_marker(folder) if (folder / EXPORT_MARKER).is_file() else {}
        model_cfg = (marker.get("config") or {}).get("model") or {}
        extra = {k: model_cfg[k] for k in ("time_loss_weight", "id_unk_rate") if model_cfg.get(k) is not None}
        module = cls(net=cfg["net"], optim=dict(model_cfg.get("optim") or {}), schema=schema.to_dict(),
                     vocab=vocab.tokens, src_seq_len=cfg["src_len"], tgt_seq_len=cfg["tgt_len"], **extra)  # fmt: skip
        load_weights(module.net, folder)
        return module.to(map_location).eval()

    def serve_api(self, settings: dict[str, Any], run: Any) -> Any:
        """``python -m zoo.serve``: the event predictor's HTTP API (`zoo.events.serve`)."""
        from zoo.events.serve import serve_api

        return serve_api(self, settings, run)

    def predict(self, cfg: Any, output_dir: Path, run: Any) -> Any:
        """``python -m zoo.predict input=history.csv k=5``: see `zoo.events.predict.predict`."""
        from zoo.events.predict import predict

        return predict(self, cfg, output_dir, run)

    # -- the family's evaluation (python -m zoo.eval) ------------------------------------------------
    def evaluate(self, datamodule: Any, trainer: pl.Trainer, cfg: Any, output_dir: Path) -> dict[str, float]:
        from zoo.events.backtest import walk_forward
        from zoo.events.evaluate import evaluate_module

        self.check_vocab(datamodule.vocab(), f"data={getattr(datamodule, 'name', '?')}")
        split = str(cfg.get("split", "test"))
        metrics = evaluate_module(self, datamodule, split, output_dir)
        cutoffs, steps = int(cfg.get("backtest_cutoffs") or 0), int(cfg.get("backtest_steps") or 0)
        if cutoffs < 0 or steps < 0:
            raise ZooError(f"backtest_cutoffs={cutoffs}, backtest_steps={steps}: expected integers >= 0")
        if cutoffs:
            device = next(self.parameters()).device
            metrics |= walk_forward(self, datamodule, split, cutoffs, steps, half_life_days=cfg.get("backtest_half_life_days"),
                                    seed=int(cfg.get("seed", 1337)), device=device)  # fmt: skip
        return metrics
