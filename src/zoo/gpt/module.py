"""The GPT LightningModule: optimizer and schedule recipes, metrics, checkpoint contents, export."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import SumMetric

from zoo.core.callbacks import log_grad_norm, logs_this_step
from zoo.core.errors import ZooError
from zoo.core.family import ZooModule
from zoo.core.optim import MuonWithAdamW, fused_adam
from zoo.gpt.evaluate import char_metrics
from zoo.gpt.model import GPT, GPTConfig


@dataclass
class OptimConfig:
    name: str = "adamw"
    """adamw | sgd | muon (Muon for the blocks' 2-D matrices, AdamW with ``lr`` for embeddings, head, gains
    and biases: `zoo.core.optim.MuonWithAdamW`; refused under FSDP)."""
    lr: float = 2e-3
    """Peak learning rate."""
    min_lr: float = 2e-4
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 50
    """Linear warmup from 0 over this many optimizer steps."""
    decay_steps: int | None = None
    """Steps of the cosine decay (default: the whole run, trainer.max_steps or epochs x batches)."""
    schedule: str = "cosine"
    """cosine | constant (after warmup)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to matrices only (not biases, LayerNorms, or embeddings' 1-d params)."""
    momentum: float = 0.0
    """SGD momentum."""
    fused: bool | None = None
    """Fused AdamW kernel (default: on CUDA and CPU, except under 16-mixed with gradient clipping)."""
    muon_lr: float = 0.02
    """Muon: peak learning rate of the hidden matrices (the same warmup and decay as ``lr``)."""
    muon_momentum: float = 0.95
    """Muon: Nesterov momentum."""
    muon_weight_decay: float = 0.0
    """Muon: decoupled weight decay of the hidden matrices (AdamW's groups keep ``weight_decay``)."""
    muon_adjust_lr: str = "original"
    """Muon: ``original`` (Keller Jordan's sqrt(max(1, rows/cols)) scaling, for lr ~0.02) or
    ``match_rms_adamw`` (Moonshot's 0.2 sqrt(max(rows, cols)): updates of AdamW's size, for AdamW-like lr)."""


def lr_factor(step: int, cfg: OptimConfig, total: int) -> float:
    """Multiplier of the peak LR at optimizer step `step`: linear warmup, then cosine to min_lr."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    decay = max(1, (cfg.decay_steps or total) - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay)
    floor = cfg.min_lr / cfg.lr if cfg.lr else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class GPTModule(ZooModule):
    """Trains `zoo.gpt.model.GPT`. Logs train/val loss, perplexity, bits per byte, loss per character,
    gradient norm; the LR comes from LearningRateMonitor and tokens/s from the Throughput callback."""

    family = "gpt"
    monitor = "val/loss"
    how_to_predict = 'python -m zoo.predict ckpt_path={folder} prompt="Once upon a time" max_new_tokens=100'
    generates = True
    export_formats = ("safetensors", "onnx", "hf")

    def __init__(
        self,
        net: dict[str, Any],
        optim: dict[str, Any],
        vocab_size: int,
        block_size: int,
        compile: bool = False,
        tokenizer_json: str | None = None,
        init_from: str | None = None,
    ):
        """`init_from`: a Hugging Face folder or hub id (GPT-2 family, or a zoo ``format=hf`` export) whose
        architecture replaces ``net``'s and whose weights start the training (`zoo.gpt.hf.load_hf`)."""
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer_json"])
        known = {f.name for f in fields(GPTConfig)} - {"vocab_size", "block_size"}
        unknown = set(net) - known
        if unknown:
            raise ZooError(f"model.net: unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
        init_state = None
        if init_from:
            net, init_state = self._init_from(str(init_from), net, vocab_size, block_size, tokenizer_json)
        try:
            self.config = GPTConfig(vocab_size=vocab_size, block_size=block_size, **net)
        except ValueError as err:
            raise ZooError(f"model.net: {err}") from err
        unknown = set(optim) - {f.name for f in fields(OptimConfig)}
        if unknown:
            raise ZooError(f"model.optim: unknown keys {sorted(unknown)}")
        self.optim = OptimConfig(**{**optim, "betas": tuple(optim.get("betas", (0.9, 0.95)))})
        if self.optim.name not in ("adamw", "sgd", "muon"):
            raise ZooError(f"model.optim.name={self.optim.name}: expected adamw, sgd or muon")
        if self.optim.muon_adjust_lr not in ("original", "match_rms_adamw"):
            raise ZooError(
                f"model.optim.muon_adjust_lr={self.optim.muon_adjust_lr}: expected original or match_rms_adamw"
            )
        self.net = GPT(self.config)
        if init_state is not None:
            from zoo.gpt.hf import load_state

            load_state(self.net, init_state, f"model.init_from={init_from}")
        self.compile = compile
        self.tokenizer_json = tokenizer_json
        self.flops_per_token = self.net.flops_per_token()
        self.val_loss_sum = SumMetric()
        self.val_tokens = SumMetric()

    def _init_from(
        self,
        init_from: str,
        net: dict[str, Any],
        vocab_size: int,
        block_size: int,
        tokenizer_json: str | None,
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The checkpoint's architecture (dropout and vocabulary padding from ``net``) and weights, after
        checking the data was tokenized by its tokenizer. The hyperparameters then hold the architecture and
        no `init_from`, so checkpoints of this run load without the HF folder."""
        from zoo.gpt.hf import load_hf
        from zoo.gpt.tokenizer import same_ids, tokenizer_from_json

        cfg, state, theirs = load_hf(init_from, block_size=block_size)
        where = f"model.init_from={init_from}"
        fix = f"expected data tokenized by its tokenizer (data.tokenizer=pretrained data.tokenizer_name={init_from})"
        if theirs and tokenizer_json:
            if not same_ids(tokenizer_from_json(tokenizer_json), tokenizer_from_json(theirs)):
                raise ZooError(f"{where}: the data's tokenizer is not this checkpoint's; {fix}")
        if cfg.vocab_size != vocab_size:
            raise ZooError(
                f"{where}: vocabulary of {cfg.vocab_size} tokens, the data's has {vocab_size}; {fix}"
            )
        keep = {k: net[k] for k in ("dropout", "pad_vocab_to") if k in net}
        arch = {k: v for k, v in asdict(cfg).items() if k not in ("vocab_size", "block_size")} | keep
        if keep.get("pad_vocab_to", cfg.pad_vocab_to) != cfg.pad_vocab_to:  # re-pad the vocabulary rows
            cfg = GPTConfig(**{**asdict(cfg), **keep})
            state = load_hf(init_from, block_size=block_size, config=cfg)[1]
        self.hparams["net"], self.hparams["init_from"] = arch, None
        return arch, state

    def configure_model(self) -> None:
        if self.compile and not isinstance(self.net, torch._dynamo.eval_frame.OptimizedModule):
            self.net = torch.compile(self.net)

    # -- steps -----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def batch_stats(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[int, int]:
        x, _ = batch
        return x.shape[0], x.numel()

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        return F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(), y.view(-1), ignore_index=-100, reduction=reduction
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        # Each self.log runs Lightning's result collection (these two were ~20% of a tiny model's CPU
        # step): log only on the steps the logger writes, and the last, which is all that reaches the logs.
        if logs_this_step(self.trainer):
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
            self.log("train/ppl", torch.exp(loss.detach()), on_step=True, on_epoch=False)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        log_grad_norm(self)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.val_loss_sum.update(self._loss(batch, reduction="sum"))
        self.val_tokens.update((batch[1] != -100).sum())

    def on_validation_epoch_end(self) -> None:
        total, tokens = self.val_loss_sum.compute(), self.val_tokens.compute()  # summed over ranks
        self.val_loss_sum.reset()
        self.val_tokens.reset()
        if tokens == 0:
            return
        loss = total / tokens
        metrics = {"val/loss": loss, "val/ppl": torch.exp(loss)}
        metrics |= char_metrics(loss, getattr(self.trainer.datamodule, "val_stats", None))
        self.log_dict(metrics, prog_bar=True, sync_dist=False)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    # -- optimization ----------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        fused = fused_adam(self) if cfg.fused is None else cfg.fused
        if cfg.name == "muon":
            optimizer = self._muon(fused)
        elif cfg.name == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)
        else:
            optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def _muon(self, fused: bool) -> MuonWithAdamW:
        """Muon for the 2-D matrices inside the blocks (qkv, proj, fc: the "hidden" weights Muon is made
        for); AdamW for the token/position embeddings and the output head (Muon's authors keep those on
        AdamW) and for every 1-D gain and bias (no decay)."""
        cfg = self.optim
        strategy = type(getattr(self._trainer, "strategy", None)).__name__
        if "FSDP" in strategy:
            # Newton-Schulz orthogonalizes a whole matrix; FSDP leaves each rank a flat shard of it.
            raise ZooError(
                "model.optim.name=muon: not supported under FSDP (Muon orthogonalizes whole matrices, FSDP "
                "shards them across ranks); expected model.optim.name=adamw with trainer=fsdp, or DDP"
            )
        named = [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]
        hidden = [p for n, p in named if p.dim() == 2 and n.startswith(("blocks.", "_orig_mod.blocks."))]
        ids = {id(p) for p in hidden}
        rest = [p for _, p in named if id(p) not in ids]
        adamw_groups = [
            {"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
        ]
        return MuonWithAdamW(
            [{"params": hidden}],
            adamw_groups,
            muon=dict(lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.muon_weight_decay,
                      adjust_lr_fn=cfg.muon_adjust_lr),
            adamw=dict(lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused),
        )  # fmt: skip

    # -- persistence -----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["zoo_tokenizer"] = self.tokenizer_json

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokenizer_json = checkpoint.get("zoo_tokenizer") or self.tokenizer_json

    def check_data(self, datamodule: Any, where: str) -> None:
        """Refuse data tokenized differently from this checkpoint's training data (python -m zoo.eval data=...)."""
        from zoo.gpt.tokenizer import tokenizer_from_json

        if not self.tokenizer_json:
            return
        theirs = datamodule.tokenizer()
        if theirs.to_json() != self.tokenizer_json:
            mine = tokenizer_from_json(self.tokenizer_json)
            raise ZooError(
                f"{where}: its tokenizer ({theirs.kind}, vocabulary {theirs.vocab_size}) does not match the "
                f"checkpoint's ({mine.kind}, vocabulary {mine.vocab_size}): expected data tokenized as in "
                "training (leave data= out, or set data.tokenizer to match)"
            )

    def evaluate(self, datamodule: Any, trainer: Any, cfg: Any, output_dir: Path) -> dict[str, float]:
        """``python -m zoo.eval``: see `zoo.gpt.evaluate.evaluate_module`."""
        from zoo.gpt.evaluate import evaluate_module

        return evaluate_module(self, datamodule, trainer, cfg, output_dir)

    def export(self, out_dir: str | Path, datamodule: Any = None, format: str = "safetensors") -> Path:
        """Write model.safetensors, config.json and tokenizer.json (loadable with `zoo.gpt.export.load` or
        `from_export`); ``format=onnx`` adds model.onnx, checked against this network; ``format=hf`` writes a
        Hugging Face folder instead (GPT-2 or GPT-NeoX, `zoo.gpt.hf.save_hf`), checked the same way."""
        from zoo.gpt.export import ONNX_FILE, save, save_onnx

        net = getattr(self.net, "_orig_mod", self.net)
        if format == "hf":
            from zoo.gpt.hf import save_hf

            return save_hf(net, self.tokenizer_json, out_dir)
        folder = save(net, self.tokenizer_json, out_dir)
        if format == "onnx":
            save_onnx(net, folder)
        else:  # a model.onnx of an earlier export would no longer match these weights
            (folder / ONNX_FILE).unlink(missing_ok=True)
        return folder

    @classmethod
    def from_export(cls, folder: str | Path, map_location: str = "cpu") -> GPTModule:
        """The module of an export folder (model.safetensors + config.json + tokenizer.json), in eval mode;
        the optimizer settings come from the run's config in zoo.json where there is one."""
        from zoo.core.family import EXPORT_MARKER, read_export_marker
        from zoo.gpt.export import load_weights, read_config, read_tokenizer

        folder = Path(folder)
        cfg = read_config(folder)
        hf = "model_type" in cfg  # a format=hf export: transformers' names and layout
        if hf:
            from zoo.gpt.hf import load_hf, load_state

            net_cfg, state, tokenizer_json = load_hf(str(folder))
            cfg = asdict(net_cfg)
        else:
            tokenizer_json = read_tokenizer(folder)
        run_config = (
            read_export_marker(folder).get("config") or {} if (folder / EXPORT_MARKER).is_file() else {}
        )
        optim = dict((run_config.get("model") or {}).get("optim") or {})
        module = cls(
            net={k: v for k, v in cfg.items() if k not in ("vocab_size", "block_size")},
            optim=optim,
            vocab_size=cfg["vocab_size"],
            block_size=cfg["block_size"],
            tokenizer_json=tokenizer_json,
        )
        if hf:
            load_state(module.net, state, str(folder))
        else:
            load_weights(module.net, folder)
        return module.to(map_location).eval()

    def serve_api(self, settings: dict[str, Any], run: Any) -> Any:
        """``python -m zoo.serve``: the GPT's HTTP API (`zoo.gpt.serve`)."""
        from zoo.gpt.serve import serve_api

        return serve_api(self, settings, run)

    def predict(self, cfg: Any, output_dir: Path, run: Any) -> list[str]:
        """``python -m zoo.predict``: continuations of ``prompt=`` or of every line of ``input=``
        (`zoo.gpt.predict.predict`)."""
        from zoo.gpt.predict import predict

        return predict(self, cfg, output_dir, run)
