"""Optimizer choices every family shares."""

from __future__ import annotations

import lightning.pytorch as pl


def fused_adam(module: pl.LightningModule) -> bool:
    """Whether `module`'s Adam/AdamW should take the fused step (``fused=True``).

    On CPU too: one pass over the parameters instead of ~10 elementwise kernels per tensor (the TFT
    recipes' 370 small tensors: 13 ms unfused vs 2 ms fused per step on 1 thread; shakespeare_char's
    0.8M parameters: 6.4 vs 2.2 ms). Not under fp16 mixed precision with gradient clipping: a fused
    step unscales fp16 gradients itself, too late for clipping to see their true norms.
    """
    trainer = module._trainer
    scaled = (
        trainer is not None and str(trainer.precision).startswith("16") and bool(trainer.gradient_clip_val)
    )
    return module.device.type in ("cuda", "cpu") and not scaled
