"""The fused forward (zoo.tft.fused) against pytorch-forecasting's own: same state dict, same outputs and
gradients up to float rounding, in training and in evaluation; the faster dropout keeps the rate."""

from __future__ import annotations

import copy

import pytest
import torch
from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import (
    GatedResidualNetwork,
    InterpretableMultiHeadAttention,
    VariableSelectionNetwork,
)

from zoo.tft import fused as fused_modules
from zoo.tft.model import Float32LSTM, lstm_settings, rebuilt
from zoo.tft.module import TFTModule

NETS = {
    # hidden_continuous_size < hidden_size: each real's residual goes through the interpolation
    "resampled": {"hidden_size": 16, "attention_head_size": 4, "hidden_continuous_size": 8, "dropout": 0.0},
    # equal sizes: no interpolation in the single-variable networks
    "same_size": {"hidden_size": 8, "attention_head_size": 2, "hidden_continuous_size": 8, "dropout": 0.0},
    "shared_networks": {
        "hidden_size": 16,
        "attention_head_size": 1,
        "hidden_continuous_size": 4,
        "dropout": 0.0,
        "share_single_variable_networks": True,
    },  # fmt: skip
}


def pair(dm, net):
    torch.manual_seed(0)
    fused = TFTModule(**dm.model_kwargs(), net=net, plots=False)
    stock = copy.deepcopy(fused)
    fused_modules.unfuse(stock.net)
    return fused, stock


def forward_backward(module, x, y):
    module.net.zero_grad(set_to_none=True)
    out = module.net(x)
    module._loss(x, y, out).backward()
    grads = {n: p.grad.clone() for n, p in module.net.named_parameters() if p.grad is not None}
    return out, grads


@pytest.fixture
def every_row_count(monkeypatch):
    """The tests' batches are small: take the composed maps however few the rows (MIN_ROWS)."""
    monkeypatch.setattr(fused_modules, "MIN_ROWS", 0)


def test_fuse_swaps_classes_and_keeps_the_state_dict(multi_dm):
    fused, stock = pair(multi_dm, NETS["resampled"])
    kinds = {type(m) for m in fused.net.modules()}
    assert {
        fused_modules.FusedVariableSelection,
        fused_modules.FusedGRN,
        fused_modules.FusedAttention,
        fused_modules.FastDropout,
        fused_modules.FullLengthLSTM,
    } <= kinds
    assert not kinds & {
        VariableSelectionNetwork,
        GatedResidualNetwork,
        InterpretableMultiHeadAttention,
        torch.nn.Dropout,
    }
    stock_kinds = {type(m) for m in stock.net.modules()}
    assert not stock_kinds & {
        fused_modules.FusedVariableSelection,
        fused_modules.FusedGRN,
        fused_modules.FusedAttention,
        fused_modules.FastDropout,
        fused_modules.FullLengthLSTM,
    }
    assert Float32LSTM in stock_kinds
    a, b = fused.net.state_dict(), stock.net.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    plain = TFTModule(**multi_dm.model_kwargs(), net=NETS["resampled"], plots=False, fused=False)
    assert not {type(m) for m in plain.net.modules()} & {
        fused_modules.FusedVariableSelection,
        fused_modules.FastDropout,
    }


@pytest.mark.parametrize("net", list(NETS))
def test_training_step_equals_pytorch_forecasting(multi_dm, net, every_row_count):
    fused, stock = pair(multi_dm, NETS[net])
    calls = []
    original = fused_modules.FusedVariableSelection._real_maps
    fused.train()
    stock.train()
    x, y = next(iter(multi_dm.train_dataloader()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            fused_modules.FusedVariableSelection,
            "_real_maps",
            lambda self, reals: calls.append(reals) or original(self, reals),
        )
        out_f, grad_f = forward_backward(fused, x, y)
    out_s, grad_s = forward_backward(stock, x, y)
    assert len(calls) == 3  # static, encoder and decoder selections all took the composed maps
    for a, b in zip(out_f["prediction"], out_s["prediction"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    for key in ("static_variables", "encoder_variables", "decoder_variables"):
        torch.testing.assert_close(out_f[key], out_s[key], rtol=1e-5, atol=1e-6)
    # a training step skips the attention weights (no loss reads them): NaN, never stale numbers
    assert (
        torch.isnan(out_f["encoder_attention"]).all()
        and out_f["encoder_attention"].shape == out_s["encoder_attention"].shape
    )
    assert grad_f.keys() == grad_s.keys()
    scale = max(g.abs().max() for g in grad_s.values())
    for name in grad_s:
        torch.testing.assert_close(grad_f[name], grad_s[name], rtol=0, atol=1e-5 * float(scale), msg=name)


def dropout_elements(module, x, y) -> dict[str, int]:
    """Elements each dropout module of `module.net` saw in one training forward/backward."""
    counts: dict[str, int] = {}

    def count(name):
        return lambda m, args: counts.__setitem__(name, counts.get(name, 0) + args[0].numel())

    hooks = [m.register_forward_pre_hook(count(name)) for name, m in module.net.named_modules()
             if isinstance(m, torch.nn.Dropout)]  # fmt: skip
    module.train()
    forward_backward(module, x, y)
    for h in hooks:
        h.remove()
    return counts


@pytest.mark.parametrize("net", ["resampled", "shared_networks"])
def test_training_step_drops_out_where_pytorch_forecasting_does(multi_dm, net, every_row_count):
    """The equality tests run without dropout (the two random streams differ): here every dropout module
    must see as many elements in the fused training step as in the stock one (none skipped or added)."""
    fused, stock = pair(multi_dm, {**NETS[net], "dropout": 0.3})
    x, y = next(iter(multi_dm.train_dataloader()))
    seen = dropout_elements(fused, x, y)
    assert seen and seen == dropout_elements(stock, x, y)


def test_evaluation_equals_pytorch_forecasting_attention_included(multi_dm, every_row_count):
    fused, stock = pair(multi_dm, {**NETS["resampled"], "dropout": 0.3})
    fused.eval()
    stock.eval()
    x, _ = next(iter(multi_dm.val_dataloader()))
    with torch.no_grad():
        out_f, out_s = fused.net(x), stock.net(x)
    for key in (
        "encoder_attention",
        "decoder_attention",
        "static_variables",
        "encoder_variables",
        "decoder_variables",
    ):
        torch.testing.assert_close(out_f[key], out_s[key], rtol=1e-5, atol=1e-6)
    for a, b in zip(out_f["prediction"], out_s["prediction"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_few_rows_take_the_stock_selection(multi_dm):
    fused, stock = pair(multi_dm, NETS["resampled"])
    x, y = next(iter(multi_dm.train_dataloader()))
    rows = x["encoder_cont"].shape[0] * x["encoder_cont"].shape[1]
    assert rows < fused_modules.MIN_ROWS
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            fused_modules.FusedVariableSelection, "_real_maps", lambda self, reals: calls.append(reals)
        )
        out_f, _ = forward_backward(fused, x, y)
    assert calls == []
    out_s, _ = forward_backward(stock, x, y)
    for a, b in zip(out_f["prediction"], out_s["prediction"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_fast_dropout_keeps_rate_scale_and_seed():
    drop = fused_modules.FastDropout(0.1)
    x = torch.ones(400, 1001)  # not a multiple of 4 elements per draw
    torch.manual_seed(3)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    p = round(0.1 * 32768) / 32768
    assert abs(dropped - p) < 5 * (p * (1 - p) / x.numel()) ** 0.5
    assert torch.allclose(y[y != 0], torch.tensor(1 / (1 - p)))
    # each of a draw's four words decides one element: every position drops at the same rate
    lanes = (y == 0).reshape(-1)[: 400 * 1000].reshape(-1, 4).float().mean(0)
    assert (lanes - p).abs().max() < 5 * (p * (1 - p) / (x.numel() / 4)) ** 0.5
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)
    assert not torch.equal(drop(x), y)
    grad = torch.ones(7, 9, requires_grad=True)
    out = drop(grad)
    out.sum().backward()
    assert torch.equal(grad.grad, out.detach())  # d(x * keep * scale)/dx = keep * scale
    drop.eval()
    assert drop(x) is x
    assert torch.equal(fused_modules.FastDropout(0.0).train()(x), x)
    assert torch.equal(fused_modules.FastDropout(1.0).train()(x), torch.zeros_like(x))


@pytest.mark.parametrize("lengths", [[6, 6, 6, 6], [6, 3, 0, 6]])
def test_full_length_lstm_equals_the_packed_one(lengths):
    """Full-length batches skip packing with the same outputs, states and gradients; any shorter
    sequence (zero-length included) takes pytorch-forecasting's packed path."""
    torch.manual_seed(0)
    stock = Float32LSTM(input_size=5, hidden_size=7, batch_first=True)
    fast = rebuilt(fused_modules.FullLengthLSTM, copy.deepcopy(stock), **lstm_settings(stock))
    x = torch.randn(4, 6, 5)
    hx = (torch.randn(1, 4, 7).expand(1, 4, 7), torch.randn(1, 4, 7))
    lengths = torch.tensor(lengths)
    packs = []
    original = torch.nn.utils.rnn.pack_padded_sequence
    results = []
    for module in (stock, fast):
        packs.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(
                torch.nn.utils.rnn,
                "pack_padded_sequence",
                lambda *a, **k: packs.append(1) or original(*a, **k),
            )
            xi = x.clone().requires_grad_()
            out, (h, c) = module(xi, hx, lengths=lengths, enforce_sorted=False)
            (out.square().sum() + h.sum() + 2 * c.sum()).backward()
        results.append((out, h, c, xi.grad, [p.grad for p in module.parameters()], len(packs)))
    (out_s, h_s, c_s, g_s, pg_s, packed_s), (out_f, h_f, c_f, g_f, pg_f, packed_f) = results
    assert packed_s == 1 and packed_f == (0 if int(lengths.min()) == 6 else 1)
    for a, b in [(out_f, out_s), (h_f, h_s), (c_f, c_s), (g_f, g_s), *zip(pg_f, pg_s)]:
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("width", [6, 32])
def test_short_row_softmax_and_layer_norm_equal_torch(width):
    """The selection weights' softmax and layer norm over a few variables take other kernels on CPU; any
    width, values and gradients stay torch's (up to float rounding)."""
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(width)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(300, width) * 3 + 1
    for ours, theirs in (
        (fused_modules._softmax, lambda t: torch.softmax(t, -1)),
        (lambda t: fused_modules._layer_norm(norm, t), norm),
    ):
        grads = []
        for f in (ours, theirs):
            xi = x.clone().requires_grad_()
            norm.zero_grad()
            out = f(xi)
            (out * torch.linspace(-1, 1, width)).sum().backward()
            grads.append((out, xi.grad, norm.weight.grad, norm.bias.grad))
        for a, b in zip(*grads):
            if a is not None or b is not None:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fuse_builds_fused_modules_that_hold_the_stock_tensors_and_draw_no_random_numbers(multi_dm):
    """`fuse` constructs new modules (no class swap) from the stock ones: the network's parameters are the
    same objects, a module the stock network shares (prescalers, shared variable networks) stays shared,
    and the random generator is where the stock build leaves it (a seeded run trains as before)."""
    torch.manual_seed(0)
    plain = TFTModule(**multi_dm.model_kwargs(), net=NETS["shared_networks"], plots=False, fused=False)
    after_plain = torch.random.get_rng_state()
    stock_params = {id(p) for p in plain.net.parameters()}
    fused_modules.fuse(plain.net)
    assert {id(p) for p in plain.net.parameters()} == stock_params
    torch.manual_seed(0)
    fused = TFTModule(**multi_dm.model_kwargs(), net=NETS["shared_networks"], plots=False)
    assert torch.equal(torch.random.get_rng_state(), after_plain)
    a, b = fused.net.state_dict(), plain.net.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    net = fused.net
    shared = next(iter(net.shared_single_variable_grns))
    assert (
        net.encoder_variable_selection.single_variable_grns[shared] is net.shared_single_variable_grns[shared]
    )
    for selection in (net.static_variable_selection, net.encoder_variable_selection,
                      net.decoder_variable_selection):  # fmt: skip
        for name, prescaler in selection.prescalers.items():
            assert prescaler is net.prescalers[name]
    assert isinstance(net.shared_single_variable_grns[shared], fused_modules.FusedGRN)
    unfused = fused_modules.unfuse(copy.deepcopy(net))
    assert not {type(m) for m in unfused.modules()} & set(fused_modules.FUSED.values())
