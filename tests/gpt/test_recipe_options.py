"""The modern recipe options: each does what its docstring says, against a hand-written reference where it
is math (ReLU², soft-capping, QK-norm), and Muon + AdamW as one optimizer steps exactly like the two
torch optimizers side by side, saves and loads both states, and is refused under FSDP in one line."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from zoo.core.errors import ZooError
from zoo.core.optim import MuonWithAdamW
from zoo.gpt.model import GPT, GPTConfig
from zoo.gpt.module import GPTModule

SMALL = dict(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)


def test_relu2_and_softcap_and_zero_init_do_what_they_say():
    torch.manual_seed(0)
    net = GPT(GPTConfig(**SMALL, activation="relu2", zero_init_proj=True, logit_softcap=3.0)).eval()
    for name, p in net.named_parameters():
        if name.endswith("proj.weight"):
            assert not p.any(), name  # every block starts as the identity
    x = torch.randn(5, 32)
    torch.testing.assert_close(net.blocks[0].mlp.act(x), torch.clamp(x, min=0) ** 2)
    idx = torch.randint(0, 40, (2, 16))
    logits = net(idx)
    assert logits.abs().max() < 3.0
    plain = copy.deepcopy(net)
    plain.cfg = GPTConfig(**SMALL, activation="relu2", zero_init_proj=True)
    torch.testing.assert_close(logits, 3.0 * torch.tanh(plain(idx) / 3.0))


def test_qk_norm_normalises_each_heads_queries_and_keys():
    torch.manual_seed(0)
    net = GPT(GPTConfig(**SMALL, qk_norm=True)).eval()
    attn = net.blocks[0].attn
    seen = {}
    attn.q_norm.register_forward_hook(lambda m, i, o: seen.update(q=(i[0], o)))
    net(torch.randint(0, 40, (2, 16)))
    q_in, q_out = seen["q"]
    expected = q_in * torch.rsqrt(q_in.pow(2).mean(-1, keepdim=True) + 1e-6) * attn.q_norm.weight
    torch.testing.assert_close(q_out, expected)
    assert q_in.shape[-1] == 16  # per head (32 / 2), not across the whole width
    with pytest.raises(ValueError, match="activation='swish'"):
        GPTConfig(**SMALL, activation="swish")


def test_muon_with_adamw_steps_like_the_two_torch_optimizers_and_resumes_exactly():
    torch.manual_seed(0)
    net = GPT(GPTConfig(**SMALL))
    twin = copy.deepcopy(net)
    module = GPTModule(net={"n_layer": 2, "n_head": 2, "n_embd": 32}, optim={"name": "muon", "lr": 1e-2},
                       vocab_size=40, block_size=16)  # fmt: skip
    module.net = net
    opt = module._muon(fused=False)
    assert isinstance(opt, MuonWithAdamW) and isinstance(opt, torch.optim.Optimizer)
    muon_params = {id(p) for g in opt.param_groups if g["muon"] for p in g["params"]}
    names = {id(p): n for n, p in net.named_parameters()}
    assert sorted(names[i] for i in muon_params) == sorted(
        n for n, p in net.named_parameters() if n.startswith("blocks.") and p.dim() == 2
    )  # wte (tied head), wpe, gains and biases stay on AdamW
    hidden = [p for n, p in twin.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
    rest = [p for n, p in twin.named_parameters() if not (n.startswith("blocks.") and p.dim() == 2)]
    ref_muon = torch.optim.Muon(hidden, lr=0.02, momentum=0.95, weight_decay=0.0, adjust_lr_fn="original")
    ref_adamw = torch.optim.AdamW(
        [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": 0.1},
         {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.95), eps=1e-8
    )  # fmt: skip

    def step(model, *optimizers):
        idx = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(len(steps)))
        loss = F.cross_entropy(model(idx[:, :-1]).reshape(-1, 40), idx[:, 1:].reshape(-1))
        loss.backward()
        for o in optimizers:
            o.step()
            o.zero_grad()

    steps: list[int] = []
    for _ in range(3):
        step(net, opt)
        step(twin, ref_muon, ref_adamw)
        steps.append(0)
    for (n, a), b in zip(net.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), n
    # save, keep stepping; a fresh optimizer loaded from the save continues the same way
    saved, weights = copy.deepcopy(opt.state_dict()), copy.deepcopy(net.state_dict())
    step(net, opt)
    after = copy.deepcopy(net.state_dict())
    net.load_state_dict(weights)
    fresh = module._muon(fused=False)
    fresh.load_state_dict(saved)
    assert fresh.muon.state is fresh.state and fresh.muon.param_groups[0] is fresh.param_groups[0]
    step(net, fresh)
    for k, v in net.state_dict().items():
        assert torch.equal(v, after[k]), k


def test_muon_is_refused_under_fsdp():
    module = GPTModule(net={}, optim={"name": "muon"}, vocab_size=40, block_size=16)

    class FSDPStrategy:  # what the check reads: the strategy's class name
        pass

    class Trainer:
        strategy = FSDPStrategy()

    module._trainer = Trainer()
    with pytest.raises(ZooError, match=r"model.optim.name=muon: not supported under FSDP") as err:
        module._muon(fused=False)
    assert "\n" not in str(err.value)
