"""What every benchmark page states about the machine it ran on."""

from __future__ import annotations

import os
import platform

import torch

from zoo.core.callbacks import cpu_model


def machine(threads: int | None = None) -> str:
    """CPU model, cores (and torch threads), torch and Python versions, and the GPU when there is one."""
    desc = f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores"
    if threads is not None:
        desc += f", {threads} torch threads"
    desc += f", torch {torch.__version__}, Python {platform.python_version()}"
    if torch.cuda.is_available():
        desc += f", {torch.cuda.get_device_name()}"
    return desc
