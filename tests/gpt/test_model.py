"""The GPT network: parameter count of the 300M recipe, causality, RoPE, KV-cache sampling."""

from __future__ import annotations

import pytest
import torch

from zoo.gpt.model import GPT, GPTConfig


def non_embedding_params(L: int, d: int) -> int:
    return L * (12 * d * d + 13 * d) + 2 * d


def test_gpt_300m_parameter_count_on_meta(compose):
    cfg = compose("experiment=gpt_300m")
    net_cfg = GPTConfig(vocab_size=50257, block_size=cfg.data.block_size, **cfg.model.net)
    with torch.device("meta"):
        net = GPT(net_cfg)
    assert net.num_params() == non_embedding_params(24, 1024) == 302_311_424
    total = net.num_params(non_embedding=False)
    # The recipe pads the 50257 embedding rows to 50304 (aligned GPU matmuls); the tied head adds nothing.
    assert total == 302_311_424 + 50304 * 1024 + 2048 * 1024
    assert 290e6 < net.num_params() < 310e6


def test_padded_vocabulary_never_predicts_padding_rows():
    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=32, pad_vocab_to=64)).eval()
    assert net.wte.weight.shape[0] == 64
    x = torch.randint(0, 50, (2, 8))
    assert net(x).shape == (2, 8, 50)
    out = net.generate(x, max_new_tokens=20, temperature=5.0)
    assert int(out.max()) < 50


@pytest.mark.parametrize("rope", [False, True])
def test_changing_a_future_token_leaves_earlier_logits_unchanged(rope):
    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, rope=rope)).eval()
    x = torch.randint(0, 50, (2, 16))
    y = x.clone()
    y[:, 10] = (y[:, 10] + 1) % 50
    a, b = net(x), net(y)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("rope", [False, True])
def test_kv_cache_sampling_matches_full_recompute(rope):
    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=4, n_embd=32, rope=rope)).eval()
    prompt = torch.randint(0, 40, (3, 5))
    cached = net.generate(prompt, max_new_tokens=20, temperature=0)
    ids = prompt
    for _ in range(20):  # greedy without any cache
        ids = torch.cat([ids, net(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, ids)
    # Past the context the sampler slides its window instead of failing.
    long = net.generate(prompt, max_new_tokens=40, temperature=1.0, top_k=5)
    assert long.shape == (3, 45)


def test_weight_tying_and_rope_drop_position_table():
    net = GPT(GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16, rope=True))
    assert net.wpe is None
    assert net.lm_head.weight is net.wte.weight
    untied = GPT(GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16, tie_weights=False))
    assert untied.lm_head.weight is not untied.wte.weight


@pytest.mark.slow
def test_gpt_300m_one_optimizer_step_at_short_context(compose):
    """The real 300M network and optimizer recipe take one AdamW step on CPU (context cut to 32)."""
    from zoo.gpt.module import GPTModule

    cfg = compose("experiment=gpt_300m")
    torch.manual_seed(0)
    module = GPTModule(
        net=dict(cfg.model.net), optim=dict(cfg.model.optim), vocab_size=50257, block_size=cfg.data.block_size
    )
    assert module.net.num_params() == 302_311_424
    opt = torch.optim.AdamW(
        module.parameters(), lr=cfg.model.optim.lr, betas=tuple(cfg.model.optim.betas), weight_decay=0.1
    )
    x = torch.randint(0, 50257, (1, 33))
    before = module.net.blocks[0].attn.qkv.weight.detach().clone()
    loss = module._loss((x[:, :-1], x[:, 1:]))
    assert abs(loss.item() - torch.log(torch.tensor(50257.0)).item()) < 1.0  # ~uniform at init
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    opt.step()
    assert not torch.equal(before, module.net.blocks[0].attn.qkv.weight)
    assert torch.isfinite(module._loss((x[:, :-1], x[:, 1:]))).item()
