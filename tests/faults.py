"""Callbacks that tests add to real `python -m zoo.train` runs through Hydra (`+callbacks.x._target_=...`):
record every step's training loss, and die by SIGKILL at a chosen step (no handler, no cleanup)."""

from __future__ import annotations

import json
import os
import signal

from lightning.pytorch.callbacks import Callback


class RecordLoss(Callback):
    """Appends {"step", "loss"} per optimizer step to a JSON-lines file, flushed at once (it must survive
    the SIGKILL that follows)."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "loss": float(loss)}) + "\n")


class KillAtStep(Callback):
    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
