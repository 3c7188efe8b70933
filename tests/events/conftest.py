"""Fixtures of the event-predictor tests."""

from __future__ import annotations

import pytest
import torch

# A tiny synthetic log: generated in about a second, enough cases and weeks for every split.
TINY = ["data.synthetic.n_employees=4", "data.synthetic.n_weeks=12"]


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: on a shared 2-core runner, OpenMP threads fighting over cores make a step
    20x slower than one thread (measured: 1.3 s vs 0.055 s per step)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
