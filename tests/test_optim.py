"""zoo.core.optim: when the families take the fused Adam step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from zoo.core.family import ZooModule
from zoo.core.optim import fused_adam


@pytest.mark.parametrize(
    ("precision", "clip", "expected"),
    [("32-true", 0.1, True), ("bf16-mixed", 0.1, True), ("16-mixed", None, True), ("16-mixed", 0.1, False)],
)
def test_fused_unless_fp16_gradients_must_be_clipped(precision, clip, expected):
    module = ZooModule()
    module.layer = torch.nn.Linear(2, 2)
    module._trainer = SimpleNamespace(precision=precision, gradient_clip_val=clip)
    assert fused_adam(module) is expected
    module._trainer = None  # outside a Trainer (a plain loop): fused on CPU
    assert fused_adam(module) is True
