"""pytorch-forecasting's TFT modules, computed with fewer and cheaper kernels (``model.fused``).

On a 2-core CPU the TFT's step is compute-bound in many small ops; the variable selection was half of
the forward pass (docs/tft.md). `fuse` replaces the network's modules of five classes by fused ones,
each built by its own constructor and holding the replaced module's parameters and buffers: the state
dict, the checkpoints and the export stay as they are; outputs and gradients equal the stock modules'
up to float rounding (tests/tft/test_fused.py compares them, and the stock modules are one ``unfuse``
away).

- `FusedVariableSelection`. A real variable is a scalar per time step; pytorch-forecasting takes it
  through ``Linear(1, d)`` (its prescaler) and then, linearly, through its network's first layer and
  the interpolation + gate of its residual path. Those composed maps are built from the stacked
  weights once per call and applied to the scalar directly: no ``d``-wide prescaled embedding, no
  upsampling kernel, the residual's layer norm in closed form, and the selection weights' first layer
  one ``[N, variables]`` matmul instead of a matmul over the concatenation of all embeddings. The rest
  of each network (ELU, second layer, gated linear unit, layer norm) is pytorch-forecasting's own.
  Batching the variables' whole networks as ``[variables, N, d]`` was tried first and was slower: the
  stacked tensors left the CPU caches. The selection weights' softmax and layer norms, over one entry
  per variable, avoid torch's slow CPU kernels for such short rows (`_softmax`, `_layer_norm`).
- `FusedGRN`. A static context expanded over time goes through the context layer once per series.
- `FusedAttention`. In a training step, all heads in one `scaled_dot_product_attention`.
- `FullLengthLSTM`. pytorch-forecasting's LSTM packs every batch to allow zero-length sequences; the
  zoo's windows all have the full length, and then the padded LSTM's outputs and states are the packed
  one's without the sort, pack and unpack (exactly; about 27 % less time per LSTM forward + backward on CPU).
- `FastDropout`. ``nn.Dropout`` on CPU draws one random number per element (``bernoulli_``) at 50x
  the cost of a multiply, 9 % of the step; this splits each 64-bit draw into four elements' words,
  with the drop probability rounded to a multiple of 1/32768 (0.1 -> 0.100006). The same rate and
  scaling from another random stream; CUDA keeps ``nn.Dropout``.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import (
    GatedResidualNetwork,
    InterpretableMultiHeadAttention,
    VariableSelectionNetwork,
)
from torch import nn
from torch.nn.utils import rnn

from zoo.tft.model import Float32LSTM, lstm_settings, rebuilt, replace_modules

MIN_ROWS = 1024  # rows (series x time steps) from which FusedVariableSelection takes the composed maps


def _interpolate(x: torch.Tensor, size: int) -> torch.Tensor:
    """pytorch-forecasting's `TimeDistributedInterpolation` (linear, corners aligned) on the last dim."""
    lead = x.shape[:-1]
    return F.interpolate(x.reshape(-1, 1, x.shape[-1]), size, mode="linear", align_corners=True).view(
        *lead, size
    )


def _is_plain(grn: nn.Module) -> bool:
    """A GRN whose residual path is the stock one (what `_grn_tail` reproduces)."""
    if type(grn) not in (GatedResidualNetwork, FusedGRN):
        return False
    resample = getattr(getattr(grn, "resample_norm", None), "resample", None)
    add_norm = grn.gate_norm.add_norm
    return (resample is None or not resample.trainable) and add_norm.input_size == add_norm.skip_size


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)`; over fewer than 8 features (the selection network's, one per variable) on CPU in plain
    ops: there torch's kernel has no vectorized path and took 1.4 ms where these take 0.9 (forward and
    backward, 12,288 rows of 6; from 8 features on, the kernel is the faster)."""
    if x.device.type != "cpu" or x.shape[-1] >= 8 or not norm.elementwise_affine or norm.bias is None:
        return norm(x)
    centred = x - x.mean(-1, keepdim=True)
    variance = (centred * centred).mean(-1, keepdim=True)
    return torch.addcmul(norm.bias, centred * torch.rsqrt(variance + norm.eps), norm.weight)


def _softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of a 2-D tensor. Over fewer than 16 entries (the selection weights, one
    per variable) torch's CPU kernel is 5x slower on a contiguous last dim than on the transposed view,
    where it takes its strided path: same values up to float rounding."""
    if x.device.type != "cpu" or x.shape[-1] >= 16:
        return torch.softmax(x, -1)
    return torch.softmax(x.t(), 0).t()


def _residual_norm(grn: GatedResidualNetwork, residual: torch.Tensor) -> torch.Tensor:
    """The part of `ResampleNorm` after its interpolation: the trainable gate, then the layer norm."""
    norm = grn.resample_norm
    if norm.trainable_add:
        residual = residual * norm.gate(norm.mask) * 2.0
    return _layer_norm(norm.norm, residual)


def _grn_tail(grn: GatedResidualNetwork, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """`GatedResidualNetwork.forward` from its first layer's output (context added) and its residual."""
    x = grn.fc2(grn.elu(hidden))
    add_norm = grn.gate_norm.add_norm
    if add_norm.trainable_add or add_norm.input_size != add_norm.skip_size:
        return grn.gate_norm(x, residual)
    return _layer_norm(add_norm.norm, grn.gate_norm.glu(x) + residual)  # GateAddNorm: GLU, add, norm


def _resamples(grn: GatedResidualNetwork) -> bool:
    return grn.input_size != grn.output_size and not grn.residual


def _context(grn: GatedResidualNetwork, context: torch.Tensor) -> torch.Tensor:
    """The GRN's context term, broadcastable to its hidden layer. The TFT passes the static context
    expanded over time (stride 0): its linear map is then computed once per series, not per step."""
    if context.dim() == 3 and context.stride(1) == 0:
        return grn.context(context[:, :1])
    return grn.context(context)


class FusedGRN(GatedResidualNetwork):
    """A `GatedResidualNetwork` that maps a time-expanded static context once per series (`_context`)."""

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        if context is None:
            return super().forward(x, context, residual)
        if residual is None:
            residual = x
        if _resamples(self):
            residual = self.resample_norm(residual)
        hidden = self.fc1(x) + _context(self, context)
        return _grn_tail(self, hidden, residual)


class FusedAttention(InterpretableMultiHeadAttention):
    """`InterpretableMultiHeadAttention` that, in a training step, runs all heads in one fused
    `scaled_dot_product_attention` (no Python loop over heads, no [B, Tq, Tk] score tensors kept for
    the backward) and returns NaN in place of the attention weights, which no loss reads. Evaluation,
    prediction and interpretation (eval mode or no grad) run the stock forward, weights included."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        attention = self.attention
        if (
            not (self.training and torch.is_grad_enabled())
            or attention.dropout is not None
            or not attention.scale
        ):
            return super().forward(q, k, v, mask)
        b, tq, tk, h = q.shape[0], q.shape[1], k.shape[1], self.n_head

        def heads(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:  # [B, h, T, d]
            weight = torch.cat([m.weight for m in layers])
            bias = torch.cat([m.bias for m in layers])
            return F.linear(x, weight, bias).view(x.shape[0], x.shape[1], h, -1).transpose(1, 2)

        vs = self.v_layer(v).unsqueeze(1).expand(b, h, tk, -1)  # one value layer shared by the heads
        # The stock mask fill (mask_bias where masked) as an additive bias: exp(s + bias) underflows to
        # 0 like exp(bias). Only a zero-length encoder leaves a row fully masked, uniform in both.
        bias = None if mask is None else mask.unsqueeze(1).to(q.dtype) * attention.mask_bias
        head = F.scaled_dot_product_attention(
            heads(self.q_layers, q), heads(self.k_layers, k), vs, attn_mask=bias
        )
        outputs = self.dropout(self.w_h(self.dropout(head).mean(dim=1)))
        return outputs, torch.full((), float("nan"), dtype=q.dtype, device=q.device).expand(b, tq, h, tk)


def _shape(grn: GatedResidualNetwork) -> tuple[Any, ...]:
    resample = getattr(grn, "resample_norm", None)
    return (grn.input_size, grn.hidden_size, grn.output_size, _resamples(grn),
            resample is not None and resample.trainable_add, grn.gate_norm.add_norm.trainable_add)  # fmt: skip


class FusedVariableSelection(VariableSelectionNetwork):
    """A `VariableSelectionNetwork` that applies the real variables' prescalers composed with the
    linear maps after them (module docstring); built from a stock one by `fuse`."""

    def _reals(self) -> list[str]:
        """The variables taken through the composed maps: prescaled reals with stock networks, all of
        one shape (else none: the stock forward runs)."""
        names = [
            n
            for n in self.input_sizes
            if n in self.prescalers
            and isinstance(self.prescalers[n], nn.Linear)
            and self.prescalers[n].in_features == 1
            and self.prescalers[n].bias is not None
            and _is_plain(self.single_variable_grns[n])
        ]
        shapes = {(self.prescalers[n].out_features, _shape(self.single_variable_grns[n])) for n in names}
        return names if len(shapes) == 1 else []

    def _real_maps(self, reals: list[str]) -> dict[str, torch.Tensor]:
        """The composed maps of all reals at once, from their stacked parameters ([V, ...] each)."""
        pres = [self.prescalers[n] for n in reals]
        grns = [self.single_variable_grns[n] for n in reals]
        w = torch.stack([p.weight[:, 0] for p in pres])  # prescaler: e = x * w + b
        b = torch.stack([p.bias for p in pres])
        fc1 = torch.stack([g.fc1.weight for g in grns])  # [V, h, d]
        maps = {"w": w, "b": b,  # fc1(e) = x * (W1 w) + (W1 b + b1)
                "slope": torch.bmm(fc1, w.unsqueeze(2)).squeeze(2),
                "offset": torch.baddbmm(torch.stack([g.fc1.bias for g in grns]).unsqueeze(2), fc1, b.unsqueeze(2)).squeeze(2)}  # fmt: skip
        if _resamples(grns[0]):
            norms = [g.resample_norm for g in grns]
            if norms[0].input_size != norms[0].output_size:  # interp(x * w + b) = x * interp(w) + interp(b)
                w, b = _interpolate(w, norms[0].output_size), _interpolate(b, norms[0].output_size)
            if norms[0].trainable_add:
                gate = torch.sigmoid(torch.stack([m.mask for m in norms])) * 2.0
                w, b = w * gate, b * gate
            # norm(x * w + b) row by row: mean x*mean(w) + mean(b), variance x^2 var(w) + 2x cov(w, b)
            # + var(b), from centred w and b (no cancellation of E[r^2] - E[r]^2)
            weight = torch.stack([m.norm.weight for m in norms])
            wc, bc = w - w.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
            maps |= {"var_w": (wc * wc).mean(1), "cov2": 2.0 * (wc * bc).mean(1), "var_b": (bc * bc).mean(1),
                     "norm_w": wc * weight, "norm_b": bc * weight,
                     "norm_bias": torch.stack([m.norm.bias for m in norms])}  # fmt: skip
        return maps

    def _selection(self, x: torch.Tensor, others: dict[str, torch.Tensor], reals: list[str],
                   maps: dict[str, torch.Tensor], context: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        """The flattened GRN's output (softmax logits) without building its concatenated input.

        Its input is the concatenation of all embeddings, which its first layer and its residual
        interpolation both map linearly: one matrix K [total, hidden + inputs]. A real's block of it
        applied to ``x * w + b`` is ``x * (w K) + b K``, so the reals contribute X [N, reals] @ A.
        """
        grn = self.flattened_grn  # resamples: forward() falls back to the stock path otherwise
        eye = torch.eye(self.input_size_total, dtype=x.dtype, device=x.device)
        interpolation = _interpolate(eye, grn.resample_norm.output_size)  # [total, inputs]
        k = torch.cat([grn.fc1.weight.t(), interpolation], dim=1)  # [total, hidden + inputs]
        rows, offset = {}, 0
        for name, size in self.input_sizes.items():
            rows[name] = k[offset : offset + size]
            offset += size
        blocks = torch.stack([rows[n] for n in reals])  # [V, d, hidden + inputs]
        a = torch.bmm(maps["w"].unsqueeze(1), blocks).squeeze(1)
        const = torch.bmm(maps["b"].unsqueeze(1), blocks).squeeze(1).sum(0)
        const = const + torch.cat([grn.fc1.bias, torch.zeros_like(interpolation[0])])
        z = torch.addmm(const, x, a)
        for name, e in others.items():
            z = z + e @ rows[name]
        hidden, residual = z.split([grn.fc1.out_features, interpolation.shape[1]], dim=1)
        if context is not None:
            hidden = (hidden.view(*context.shape[:-1], -1) + _context(grn, context)).view(hidden.shape)
        residual = _residual_norm(grn, residual)
        return _grn_tail(grn, hidden, residual)

    def forward(self, x: dict[str, torch.Tensor], context: torch.Tensor | None = None) -> Any:
        selection = self.num_inputs > 1 and _is_plain(self.flattened_grn) and _resamples(self.flattened_grn)
        reals = self._reals() if selection else []
        # Few rows (the static variables: one per series) are bound by per-op overhead, where the
        # composed maps' own small ops cost more than they save (measured: 0.8x at 128 rows).
        if not reals or x[reals[0]].numel() < MIN_ROWS:
            return super().forward(x, context)
        lead = x[reals[0]].shape[:-1]
        # [V, N], variable-major: each real's rows contiguous through its own network
        values = torch.stack([x[n].reshape(-1) for n in reals])
        others: dict[str, torch.Tensor] = {}
        for name in self.input_sizes:
            if name not in reals:
                e = x[name]
                if name in self.prescalers:
                    e = self.prescalers[name](e)
                others[name] = e.reshape(-1, e.shape[-1])
        maps = self._real_maps(reals)
        weights = _softmax(self._selection(values.t(), others, reals, maps, context))  # [N, inputs]
        columns = values.unsqueeze(2)  # [V, N, 1]
        hidden = torch.addcmul(maps["offset"].unsqueeze(1), columns, maps["slope"].unsqueeze(1)).unbind(0)
        if "var_w" in maps:  # each real's residual: its layer norm in closed form (_real_maps)
            var_w, cov2, var_b = (maps[k].unsqueeze(1) for k in ("var_w", "cov2", "var_b"))
            var = (values * var_w + cov2) * values + var_b
            eps = self.single_variable_grns[reals[0]].resample_norm.norm.eps
            inv = torch.rsqrt(var.clamp_min(0.0) + eps).unsqueeze(2)  # [V, N, 1]
            scaled = (columns * inv).unbind(0)
            residuals = [torch.addcmul(torch.addcmul(bias, s, w), i, b) for bias, s, w, i, b
                         in zip(maps["norm_bias"], scaled, maps["norm_w"], inv.unbind(0), maps["norm_b"])]  # fmt: skip
        else:
            residuals = [torch.addcmul(b, c, w) for c, w, b in zip(columns.unbind(0), maps["w"], maps["b"])]
        column = {n: j for j, n in enumerate(reals)}
        outputs = None
        for i, name in enumerate(self.input_sizes):
            if name in column:
                j = column[name]
                encoded = _grn_tail(self.single_variable_grns[name], hidden[j], residuals[j])
            else:
                encoded = self.single_variable_grns[name](others[name])
            weight = weights[:, i : i + 1]
            outputs = encoded * weight if outputs is None else torch.addcmul(outputs, encoded, weight)
        return outputs.view(*lead, -1), weights.contiguous().view(*lead, 1, -1)


class FullLengthLSTM(Float32LSTM):
    """The TFT's LSTM, unpacked when every sequence of the batch has the full length (module docstring)."""

    def forward(self, x: Any, hx: Any = None, lengths: Any = None, enforce_sorted: bool = True) -> Any:
        if (
            lengths is not None
            and self.batch_first
            and not isinstance(x, rnn.PackedSequence)
            and x.size(1) > 0
            and bool((lengths == x.size(1)).all())
        ):
            lengths = None
        return super().forward(x, hx=hx, lengths=lengths, enforce_sorted=enforce_sorted)


class FastDropout(nn.Dropout):
    """`nn.Dropout` with 16 random bits per element on CPU (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or sys.byteorder != "little":
            return super().forward(x)
        drop = round(self.p * 32768)  # the drop probability, in units of 1/32768
        if drop >= 32768:
            return x * 0.0
        n = x.numel()
        # random_() on int64 is uniform on [0, 2**63): as four 16-bit words (little-endian), the low three
        # are uniform on [-32768, 32767] and the top one on [0, 32767]; each gets its threshold.
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()
        threshold = torch.tensor([2 * drop - 32768] * 3 + [drop], dtype=torch.int16, device=x.device)
        keep = (bits.view(torch.int16).view(-1, 4) >= threshold).view(-1)[:n].view(x.shape)
        # One float mask (0 or the scale) in x's dtype: one multiply forward and one backward, not two each.
        return x * keep.to(x.dtype).mul_(32768.0 / (32768 - drop))


def _grn_settings(m: GatedResidualNetwork) -> dict[str, Any]:
    keys = ("input_size", "hidden_size", "output_size", "dropout", "context_size", "residual")
    return {k: getattr(m, k) for k in keys}


def _selection_settings(m: VariableSelectionNetwork) -> dict[str, Any]:
    """Its settings, and its own variable networks and prescalers: the new one holds the same modules
    (shared ones stay shared), only its flattened network is rebuilt."""
    keys = ("input_sizes", "hidden_size", "input_embedding_flags", "dropout", "context_size")
    return {k: getattr(m, k) for k in keys} | {"single_variable_grns": m.single_variable_grns,
                                               "prescalers": m.prescalers}  # fmt: skip


def _attention_settings(m: InterpretableMultiHeadAttention) -> dict[str, Any]:
    return {"n_head": m.n_head, "d_model": m.d_model, "dropout": m.dropout.p, "mask_bias": m.mask_bias}


def _dropout_settings(m: nn.Dropout) -> dict[str, Any]:
    return {"p": m.p, "inplace": m.inplace}


# stock class, its fused counterpart, and the constructor settings of a module of either
KINDS = [(VariableSelectionNetwork, FusedVariableSelection, _selection_settings),
         (GatedResidualNetwork, FusedGRN, _grn_settings),
         (InterpretableMultiHeadAttention, FusedAttention, _attention_settings),
         (nn.Dropout, FastDropout, _dropout_settings), (Float32LSTM, FullLengthLSTM, lstm_settings)]  # fmt: skip
FUSED = {stock: fused for stock, fused, _ in KINDS}


def _replace_kinds(net: nn.Module, kinds: dict[type, tuple[type, Any]]) -> nn.Module:
    def replacement(m: nn.Module) -> nn.Module | None:
        kind = kinds.get(type(m))
        return None if kind is None else rebuilt(kind[0], m, **kind[1](m))

    return replace_modules(net, replacement)


def fuse(net: nn.Module) -> nn.Module:
    """Replace `net`'s modules of a `FUSED` class by their fused counterparts, each built from the stock
    module it replaces (same parameters, buffers and state dict; only ``forward`` differs)."""
    return _replace_kinds(net, {stock: (fused, settings) for stock, fused, settings in KINDS})


def unfuse(net: nn.Module) -> nn.Module:
    """The inverse of `fuse`: pytorch-forecasting's own modules (and forward passes) again."""
    return _replace_kinds(net, {fused: (stock, settings) for stock, fused, settings in KINDS})
