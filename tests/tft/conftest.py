"""Small TFT datamodules shared by the TFT tests (built once per session: pytorch-forecasting's
dataset construction is the slow part)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo.tft.datamodule import MetricsDataModule

SMALL = dict(
    source="synthetic",
    synthetic={"n_hosts": 3, "days": 6, "step_minutes": 60, "noise": 1.0, "seed": 1},
    step="1h",
    max_gap="2h",
    encoder_length=24,
    prediction_length=6,
    calendar=["hour_sin", "hour_cos"],
    static_categoricals=["host"],
    num_workers=0,
    batch_size=16,
)


def small_dm(cache_dir: Path, **overrides) -> MetricsDataModule:
    return MetricsDataModule(**{**SMALL, "cache_dir": str(cache_dir), **overrides})


@pytest.fixture(scope="session")
def multi_dm(cache_dir: Path) -> MetricsDataModule:
    dm = small_dm(cache_dir)
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.fixture(scope="session")
def single_dm(cache_dir: Path) -> MetricsDataModule:
    dm = small_dm(cache_dir, targets=["cpu_percent"], name="single")
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.fixture(autouse=True)
def one_torch_thread():
    """What TFTModule does on CPU during fit/eval, for the tests that call the network directly."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
