"""The network's masks and the loss normalization."""

from __future__ import annotations

import pytest
import torch

from zoo.events.model import EventPredictor, NetConfig, field_losses, last_valid
from zoo.events.schema import BOS, PAD

SIZES = [7, 9, 5, 6]
STREAMS = ["a", "a", "b", "c"]


def make_net(**overrides) -> EventPredictor:
    torch.manual_seed(0)
    cfg = NetConfig(
        d_model=16,
        n_heads=2,
        encoder_layers=2,
        decoder_layers=2,
        dim_feedforward=32,
        dropout=0.0,
        **overrides,
    )
    return EventPredictor(cfg, SIZES, STREAMS, src_len=6, tgt_len=5).eval()


def random_ids(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    return torch.stack([torch.randint(4, v, (batch, length), generator=generator) for v in SIZES], -1)


@pytest.mark.parametrize("memory", ["last", "full"])
def test_no_target_position_sees_a_later_target(memory):
    net = make_net(memory=memory)
    g = torch.Generator().manual_seed(1)
    src, src_len = random_ids(3, 6, g), torch.tensor([6, 4, 2])
    tgt = random_ids(3, 5, g)
    tgt_in = torch.cat([torch.full_like(tgt[:, :1], BOS), tgt[:, :-1]], 1)
    changed = tgt.clone()
    k = 2
    changed[:, k] = (changed[:, k] - 4 + 1) % (torch.tensor(SIZES) - 4) + 4  # a different valid value
    changed_in = torch.cat([torch.full_like(changed[:, :1], BOS), changed[:, :-1]], 1)
    with torch.no_grad():
        before, _ = net(src, src_len, tgt_in)
        after, _ = net(src, src_len, changed_in)
    for a, b in zip(before, after):
        # Target k enters the decoder at position k + 1: positions <= k must not move, k + 1 must.
        torch.testing.assert_close(a[:, : k + 1], b[:, : k + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(a[:, k + 1], b[:, k + 1])


def test_last_valid_picks_the_last_valid_position():
    h = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    out = last_valid(h, torch.tensor([5, 2]))
    torch.testing.assert_close(out, torch.stack([h[0, 4], h[1, 1]]))


def test_memory_ignores_padding_and_equals_the_unpadded_window():
    net = make_net(memory="last")
    g = torch.Generator().manual_seed(2)
    src = random_ids(2, 6, g)
    lengths = torch.tensor([3, 6])
    with torch.no_grad():
        memory, mask = net.encode(src, lengths)
        junk = src.clone()
        junk[0, 3:] = random_ids(1, 3, g)[0]  # overwrite the padding of sample 0 only
        memory_junk, _ = net.encode(junk, lengths)
        alone, _ = net.encode(src[:1, :3], torch.tensor([3]))  # the same 3 events, no padding at all
    assert mask is None and memory.shape == (2, 3, 16)  # one vector per stream
    torch.testing.assert_close(memory, memory_junk, rtol=0, atol=1e-6)
    torch.testing.assert_close(memory[:1], alone, rtol=1e-5, atol=1e-5)
    # And the vector really is the last valid one: moving the last event changes it.
    moved = src.clone()
    moved[0, 2] = random_ids(1, 1, g)[0, 0]
    with torch.no_grad():
        memory_moved, _ = net.encode(moved, lengths)
    assert not torch.allclose(memory_moved[0], memory[0])


def test_loss_sum_is_n_fields_times_mean_and_ignores_padding():
    g = torch.Generator().manual_seed(3)
    tgt = random_ids(4, 5, g)
    tgt[:, 3:] = PAD
    logits = [torch.randn(4, 5, v, generator=g) for v in SIZES]
    per_field = field_losses(logits, tgt)
    assert per_field.shape == (len(SIZES),)
    torch.testing.assert_close(per_field.sum(), len(SIZES) * per_field.mean())
    # Padding positions do not count: scrambling their logits changes nothing.
    scrambled = [lg.clone() for lg in logits]
    for lg in scrambled:
        lg[:, 3:] = torch.randn_like(lg[:, 3:]) * 10
    torch.testing.assert_close(field_losses(scrambled, tgt), per_field)
    manual = torch.nn.functional.cross_entropy(
        logits[0][:, :3].reshape(-1, SIZES[0]), tgt[:, :3, 0].reshape(-1)
    )
    torch.testing.assert_close(per_field[0], manual)


@pytest.mark.parametrize(
    "overrides",
    [
        {"combine": "concat"},
        {"positions": False},
        {"stream_encoders": False},
        {"teacher_forcing": False},
        {"time_head": False},
        {"norm_first": False},
    ],
)
def test_every_switch_builds_and_runs(overrides):
    net = make_net(**overrides)
    g = torch.Generator().manual_seed(4)
    logits, time = net(random_ids(2, 6, g), torch.tensor([6, 1]), random_ids(2, 5, g))
    assert [lg.shape for lg in logits] == [(2, 5, v) for v in SIZES]
    assert (time is None) == (overrides.get("time_head") is False)
    n_streams = 1 if overrides.get("stream_encoders") is False else 3
    assert len(net.encoders) == n_streams
