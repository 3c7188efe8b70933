"""The multi-stream event predictor network (plain PyTorch; the LightningModule is in module.py).

    source window [B, S, F] --split by stream--> per-stream FieldEmbedding + Transformer encoder
        --> memory: each stream's LAST VALID vector ([B, n_streams, d]; or all its outputs, memory=full)
    target input [B, T, F] (<bos>, then the targets shifted by one) --> FieldEmbedding
        --> Transformer decoder (causal self-attention, cross-attention to the memory)
        --> one linear head per field ([B, T, V_f]) and an optional log-time-to-next head ([B, T])

Every part can be switched for ablation (`NetConfig`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.events.schema import BOS, PAD


@dataclass
class NetConfig:
    d_model: int = 32
    """Width of every embedding, encoder and decoder."""
    n_heads: int = 4
    """Attention heads (d_model must divide evenly)."""
    encoder_layers: int = 1
    """Transformer layers of each stream encoder."""
    decoder_layers: int = 1
    """Transformer decoder layers."""
    dim_feedforward: int = 128
    """Hidden width of the feed-forward blocks."""
    dropout: float = 0.1
    """Dropout in attention, feed-forward and embeddings."""
    combine: str = "sum"
    """How an event's field embeddings become one vector: sum | concat (concatenate, then a linear map)."""
    positions: bool = True
    """Learned position embeddings in source and target windows."""
    stream_encoders: bool = True
    """One encoder per stream (False: a single encoder over all fields)."""
    memory: str = "last"
    """Decoder memory: last (each stream's last valid vector) | full (all encoder outputs)."""
    teacher_forcing: bool = True
    """Decoder input = targets shifted by one; False: <bos> at every position (non-autoregressive)."""
    time_head: bool = True
    """Regression head for log(1 + days to the next event)."""
    norm_first: bool = True
    """Pre-LayerNorm Transformer layers (more stable in deeper stacks)."""

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.combine not in ("sum", "concat"):
            raise ValueError(f"combine={self.combine}: expected sum or concat")
        if self.memory not in ("last", "full"):
            raise ValueError(f"memory={self.memory}: expected last or full")


class FieldEmbedding(nn.Module):
    """One learnable embedding per field, combined into d_model, plus positions."""

    def __init__(
        self, sizes: list[int], d_model: int, combine: str, max_len: int, positions: bool, dropout: float
    ):
        super().__init__()
        # One table with per-field offsets: a single gather for all fields instead of F small lookups.
        offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.table = nn.Embedding(int(sum(sizes)), d_model)
        self.combine = combine
        self.proj = nn.Linear(d_model * len(sizes), d_model) if combine == "concat" else None
        self.pos = nn.Embedding(max_len, d_model) if positions else None
        self.drop = nn.Dropout(dropout)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.table(ids + self.offsets)  # [B, L, F, d]
        x = self.proj(e.flatten(2)) if self.proj is not None else e.sum(2)
        if self.pos is not None:
            x = x + self.pos.weight[: ids.shape[1]]
        return self.drop(x)


def last_valid(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """h [B, L, d], lengths [B] (valid positions are 0..len-1) -> h[b, len_b - 1] as [B, d]."""
    index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, h.shape[-1])
    return h.gather(1, index).squeeze(1)


def causal_mask(size: int, device: torch.device) -> torch.Tensor:
    """True above the diagonal: position i may not attend to any j > i."""
    return torch.ones(size, size, dtype=torch.bool, device=device).triu(1)


class EventPredictor(nn.Module):
    def __init__(
        self, cfg: NetConfig, field_sizes: list[int], field_streams: list[str], src_len: int, tgt_len: int
    ):
        super().__init__()
        self.cfg, self.field_sizes, self.src_len, self.tgt_len = cfg, list(field_sizes), src_len, tgt_len
        streams = list(dict.fromkeys(field_streams)) if cfg.stream_encoders else ["all"]
        self.streams = streams
        self.stream_fields = [
            [i for i, s in enumerate(field_streams) if cfg.stream_encoders is False or s == name]
            for name in streams
        ]
        for i, idx in enumerate(self.stream_fields):
            self.register_buffer(f"stream_idx_{i}", torch.tensor(idx), persistent=False)
        d = cfg.d_model

        def enc_layer() -> nn.TransformerEncoderLayer:
            return nn.TransformerEncoderLayer(
                d, cfg.n_heads, cfg.dim_feedforward, cfg.dropout, batch_first=True, norm_first=cfg.norm_first
            )

        self.src_embed = nn.ModuleList(
            FieldEmbedding([field_sizes[i] for i in idx], d, cfg.combine, src_len, cfg.positions, cfg.dropout)
            for idx in self.stream_fields
        )
        self.encoders = nn.ModuleList(
            nn.TransformerEncoder(
                enc_layer(),
                cfg.encoder_layers,
                norm=nn.LayerNorm(d) if cfg.norm_first else None,
                enable_nested_tensor=False,
            )
            for _ in streams
        )
        # Cross-attention has no notion of order over the memory: a learned tag says which stream a vector is.
        self.stream_tag = nn.Parameter(torch.zeros(len(streams), d))
        self.tgt_embed = FieldEmbedding(field_sizes, d, cfg.combine, tgt_len, cfg.positions, cfg.dropout)
        dec_layer = nn.TransformerDecoderLayer(
            d, cfg.n_heads, cfg.dim_feedforward, cfg.dropout, batch_first=True, norm_first=cfg.norm_first
        )
        self.decoder = nn.TransformerDecoder(
            dec_layer, cfg.decoder_layers, norm=nn.LayerNorm(d) if cfg.norm_first else None
        )
        self.heads = nn.ModuleList(nn.Linear(d, v) for v in field_sizes)
        self.time_head = nn.Linear(d, 1) if cfg.time_head else None

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(memory [B, M, d], memory padding mask [B, M] or None)."""
        pad = torch.arange(src.shape[1], device=src.device)[None, :] >= src_len[:, None]  # True = padding
        memories, masks = [], []
        for i, (embed, encoder) in enumerate(zip(self.src_embed, self.encoders)):
            x = embed(src.index_select(2, getattr(self, f"stream_idx_{i}")))
            h = encoder(x, src_key_padding_mask=pad)
            if self.cfg.memory == "last":
                memories.append(last_valid(h, src_len).unsqueeze(1) + self.stream_tag[i])
            else:
                memories.append(h + self.stream_tag[i])
                masks.append(pad)
        memory = torch.cat(memories, 1)
        return memory, (torch.cat(masks, 1) if masks else None)

    def decode(
        self, memory: torch.Tensor, memory_mask: torch.Tensor | None, tgt_in: torch.Tensor
    ) -> torch.Tensor:
        if not self.cfg.teacher_forcing:
            tgt_in = torch.full_like(tgt_in, BOS)
        y = self.tgt_embed(tgt_in)
        mask = causal_mask(tgt_in.shape[1], tgt_in.device)
        return self.decoder(y, memory, tgt_mask=mask, tgt_is_causal=True, memory_key_padding_mask=memory_mask)

    def heads_out(self, h: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        logits = [head(h) for head in self.heads]
        time = self.time_head(h).squeeze(-1) if self.time_head is not None else None
        return logits, time

    def forward(
        self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        memory, memory_mask = self.encode(src, src_len)
        return self.heads_out(self.decode(memory, memory_mask, tgt_in))

    def config_dict(self) -> dict:
        return {
            "net": asdict(self.cfg),
            "field_sizes": self.field_sizes,
            "src_len": self.src_len,
            "tgt_len": self.tgt_len,
        }


def field_losses(logits: list[torch.Tensor], tgt: torch.Tensor) -> torch.Tensor:
    """Per-field cross-entropy over non-padding targets: [n_fields]. Padding is the same position in every
    field, so every field averages over the same targets and `sum == n_fields * mean` exactly."""
    return torch.stack(
        [
            F.cross_entropy(lg.flatten(0, 1).float(), tgt[..., i].flatten(), ignore_index=PAD)
            for i, lg in enumerate(logits)
        ]
    )


def time_loss(pred: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L1 loss on log1p(days), absolute error in days per valid target, valid mask)."""
    valid = ~torch.isnan(dt)
    target = torch.log1p(dt[valid].clamp(min=0))
    p = pred[valid].float()
    if target.numel() == 0:
        zero = pred.sum() * 0.0
        return zero, zero.new_zeros(0), valid
    err_days = (torch.expm1(p.clamp(max=20)) - dt[valid]).abs()
    return F.l1_loss(p, target), err_days, valid


def objective(
    net: torch.nn.Module, batch: dict[str, torch.Tensor], time_loss_weight: float
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The training loss of `net` on a batch (mean over fields of the per-field cross-entropy, plus
    `time_loss_weight` x the time head's L1) and what the metrics read (per-field losses, logits, ...)."""
    logits, time_pred = net(batch["src"], batch["src_len"], batch["tgt_in"])
    per_field = field_losses(logits, batch["tgt"])
    out: dict[str, Any] = {
        "per_field": per_field,
        "mean": per_field.mean(),
        "sum": per_field.sum(),
        "logits": logits,
    }
    loss = out["mean"]
    if time_pred is not None:
        t_loss, err_days, _ = time_loss(time_pred, batch["dt"])
        out["time_loss"], out["err_days"] = t_loss, err_days
        loss = loss + time_loss_weight * t_loss
    return loss, out


def distributions(logits: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each field's probabilities over the values an event can have: softmax of its logits with <pad>
    and <bos> ruled out (never a real next value). What model.onnx outputs, and what decoding reads."""
    out = []
    for lg in logits:
        values = torch.arange(lg.shape[-1], device=lg.device)
        out.append(
            torch.softmax(lg.float().masked_fill((values == PAD) | (values == BOS), float("-inf")), -1)
        )
    return out
