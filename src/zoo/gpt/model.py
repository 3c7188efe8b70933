"""A decoder-only GPT in one file: pre-LayerNorm blocks, causal scaled-dot-product attention (flash
kernels on GPU), tied input/output embeddings, learned or rotary positions, and a KV cache for sampling.
With the recipe options at their defaults it is nanoGPT's network (tests/gpt/test_nanogpt_parity.py); the
options (`GPTConfig.activation`, `qk_norm`, `zero_init_proj`, `logit_softcap`) are each a few lines below.

Parameter count (documented because recipes are named by it): with d = n_embd, L = n_layer, V = vocab,
T = block_size and biases on,

    per block   = 12 d^2 + 13 d      (qkv 3d^2+3d, proj d^2+d, mlp 8d^2+5d, two LayerNorms 4d)
    non-embedding = L (12 d^2 + 13 d) + 2 d   (final LayerNorm)
    embeddings  = V d (shared with the output head) + T d (learned positions; 0 with RoPE)

gpt_300m (L=24, d=1024, V=50257, T=2048, RoPE off) has 302.3M non-embedding parameters (302,311,424), 355.9M in all.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 256
    """Tokens in the vocabulary (read from the data)."""
    block_size: int = 128
    """Context length: the longest sequence the model sees."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block; n_embd must divide evenly."""
    n_embd: int = 128
    """Width of the residual stream (d_model)."""
    dropout: float = 0.0
    """Dropout on attention weights, residual branches and embeddings."""
    bias: bool = True
    """Biases in Linear and LayerNorm layers (False is slightly faster and often no worse)."""
    rope: bool = False
    """Rotary position embeddings instead of a learned position table."""
    rope_base: float = 10000.0
    """RoPE frequency base."""
    tie_weights: bool = True
    """Share the token embedding with the output head."""
    pad_vocab_to: int = 1
    """Round the embedding/output rows up to a multiple of this; the extra logits are cut off. 64 keeps
    GPU matmuls on aligned tensor-core kernels (GPT-2's 50257 rows fall back to slow ones)."""
    activation: str = "gelu"
    """MLP nonlinearity: ``gelu`` (exact, nanoGPT), ``gelu_tanh`` (GPT-2's tanh approximation, "gelu_new" in
    HF; set when GPT-2 weights are loaded) or ``relu2`` (ReLU squared, Primer / modded-nanogpt: sparser,
    learns faster per step on small models)."""
    qk_norm: bool = False
    """RMS-normalise each head's queries and keys (learned gain per channel) before RoPE and attention:
    bounds the attention logits, which lets higher learning rates stay stable (OLMo 2, Qwen3, speedruns)."""
    zero_init_proj: bool = False
    """Start the residual-branch output projections (attention and MLP ``proj``) at zero, so every block
    begins as the identity (modded-nanogpt); off: GPT-2's depth-scaled normal init."""
    logit_softcap: float = 0.0
    """Cap the logits smoothly at +-this value, ``cap * tanh(logits / cap)`` (Gemma 2, modded-nanogpt);
    0: off. Keeps early, overconfident logits from dominating the loss."""

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // max(1, self.pad_vocab_to)) * max(1, self.pad_vocab_to)

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.rope and (self.n_embd // self.n_head) % 2:
            raise ValueError("RoPE needs an even head size (n_embd / n_head)")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        if self.logit_softcap < 0:
            raise ValueError(f"logit_softcap={self.logit_softcap}: expected 0 (off) or a positive cap")


def relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": partial(F.gelu, approximate="tanh"), "relu2": relu2}


def rope_tables(
    cfg: GPTConfig, length: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    head = cfg.n_embd // cfg.n_head
    inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, head, 2, device=device, dtype=torch.float32) / head))
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :h/2], x[..., h/2:]) of a (B, heads, T, h) tensor by position-dependent angles."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)
        head = cfg.n_embd // cfg.n_head
        self.q_norm = nn.RMSNorm(head, eps=1e-6) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(head, eps=1e-6) if cfg.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: dict | None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:  # sampling: keys/values of earlier positions are reused, not recomputed
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        # With a cache and one new token, that token may attend to everything before it (no mask needed);
        # a multi-token prompt on an empty cache is an ordinary causal pass. Without a cache the pass is
        # always causal (one token: the same thing), so tracing for ONNX never turns on the symbolic length.
        causal = (cache is None or T > 1) and mask is None
        # `mask` (B, 1, T, S), True = may attend: rows of different lengths decoded together (zoo.gpt.serve
        # keeps them left-padded in one cache); it already holds the causal part.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope=None, cache: dict | None = None, mask=None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), rope, cache, mask)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.padded_vocab_size, cfg.n_embd)
        self.wpe = None if cfg.rope else nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # Residual projections are scaled down by depth (GPT-2) so the residual stream's variance stays put.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                if cfg.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters; by default without the (tied) token and position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel()
            if self.wpe is not None:
                n -= self.wpe.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward): 6N plus attention's 12 L d T (PaLM appendix B).

        N counts every weight used in a matmul: the non-embedding weights and the output head (a tied head
        is excluded by `num_params`, but its matmul is real work), not the embedding lookups."""
        c = self.cfg
        head = self.lm_head.weight.numel() if c.tie_weights else 0
        return 6 * (self.num_params() + head) + 12 * c.n_layer * c.n_embd * c.block_size

    def forward(
        self,
        idx: torch.Tensor,
        caches: list[dict] | None = None,
        start: int | torch.Tensor = 0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids (B, T); `start` is the position of idx[:, 0], or one per row
        (a (B,) tensor, negative for left padding: padded slots get position 0), with `mask` (B, 1, T, S)
        saying which cached and new positions each one may attend to."""
        T = idx.shape[1]
        if isinstance(start, torch.Tensor):
            pos = (start.view(-1, 1) + torch.arange(T, device=idx.device)).clamp(min=0)
            end = int(pos.max()) + 1
        else:
            pos, end = None, start + T
        if end > self.cfg.block_size:
            raise ValueError(f"sequence of {end} tokens is longer than block_size={self.cfg.block_size}")
        x = self.wte(idx)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, end, device=idx.device) if pos is None else pos)
        else:
            cos, sin = rope_tables(self.cfg, end, idx.device)
            rope = (cos[start:], sin[start:]) if pos is None else (cos[pos][:, None], sin[pos][:, None])
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, caches[i] if caches is not None else None, mask)
        logits = self.lm_head(self.ln_f(x))
        if self.cfg.padded_vocab_size != self.cfg.vocab_size:
            logits = logits[..., : self.cfg.vocab_size]
        if self.cfg.logit_softcap:
            cap = self.cfg.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        stop_token: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample continuations of idx (B, T). Uses a KV cache until the context is full, then slides."""
        caches: list[dict] | None = [{} for _ in self.blocks]
        pos = 0
        window = idx[:, -self.cfg.block_size :]
        for _ in range(max_new_tokens):
            if caches is not None and pos + window.shape[1] <= self.cfg.block_size:
                logits = self(window, caches, start=pos)[:, -1, :]
                pos += window.shape[1]
            else:  # context full: recompute over the last block_size tokens
                caches = None
                logits = self(idx[:, -self.cfg.block_size :])[:, -1, :]
            nxt = pick_next(logits, temperature, top_k, generator)
            idx = torch.cat([idx, nxt], dim=1)
            window = nxt
            if stop_token is not None and bool((nxt == stop_token).all()):
                break
        return idx

    def config_dict(self) -> dict:
        return asdict(self.cfg)


def pick_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """The next token of each row (B, 1) from last-position logits (B, vocab): greedy at temperature <= 0,
    else sampled from the top_k logits / temperature. `GPT.generate` and the ONNX loop both use it."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits.float(), dim=-1), 1, generator=generator)
