"""The zoo's plain GPT against nanoGPT's model.py (../shared/peers/nanogpt, imported from there, never copied):
the same weights give the same logits, loss and gradients, so recipe options are measured against a known base."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ROOT
from zoo.gpt.model import GPT, GPTConfig

NANOGPT = ROOT.parent / "shared" / "peers" / "nanogpt" / "model.py"


def nanogpt_module():
    if not NANOGPT.is_file():
        pytest.skip(f"nanoGPT not found at {NANOGPT}")
    spec = importlib.util.spec_from_file_location("nanogpt_model", NANOGPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def zoo_name(name: str) -> str:
    """nanoGPT parameter name -> the zoo's (same layout: both use nn.Linear, weights are [out, in])."""
    name = name.removeprefix("transformer.")
    name = re.sub(r"^h\.", "blocks.", name)
    for theirs, mine in (
        ("ln_1", "ln1"),
        ("ln_2", "ln2"),
        ("c_attn", "qkv"),
        ("c_fc", "fc"),
        ("c_proj", "proj"),
    ):
        name = name.replace(theirs, mine)
    return name


@pytest.mark.parametrize("bias", [True, False])
def test_zoo_gpt_matches_nanogpt_with_the_same_weights(bias):
    ng = nanogpt_module()
    torch.manual_seed(0)
    kw = dict(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=64, dropout=0.0, bias=bias)
    theirs = ng.GPT(ng.GPTConfig(**kw))
    mine = GPT(GPTConfig(**kw))
    state = {zoo_name(k): v for k, v in theirs.state_dict().items()}
    assert set(state) == set(mine.state_dict())
    mine.load_state_dict(state)

    x = torch.randint(0, 65, (3, 32), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 65, (3, 32), generator=torch.Generator().manual_seed(2))
    their_logits, their_loss = theirs(x, y)
    my_logits = mine(x)
    my_loss = F.cross_entropy(my_logits.reshape(-1, 65), y.reshape(-1))
    torch.testing.assert_close(my_logits, their_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(my_loss, their_loss, rtol=0, atol=1e-6)

    their_loss.backward()
    my_loss.backward()
    their_grads = {zoo_name(k): p.grad for k, p in theirs.named_parameters()}
    for name, p in mine.named_parameters():
        torch.testing.assert_close(p.grad, their_grads[name], rtol=0, atol=1e-6, msg=name)
    # The initialisation recipe is the same too: per-tensor spreads agree (GPT-2's depth-scaled projections).
    fresh = dict(GPT(GPTConfig(**kw)).named_parameters())
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if p.numel() >= 1000:
                assert abs(float(p.std()) - float(fresh[zoo_name(name)].std())) < 2e-3, name
