"""Every TFT recipe composes and instantiates its datamodule settings without touching data."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

CONF = Path(__file__).resolve().parents[2] / "conf"
DATA = sorted(p.stem for p in (CONF / "data" / "tft").glob("*.yaml") if not p.stem.startswith("_"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("tft_*.yaml"))


def test_recipes_are_found():
    assert {"synthetic", "file", "alibaba", "bitbrains", "nab_aws", "etth1"} <= set(DATA)
    assert {"tft_alibaba", "tft_etth1", "tft_small"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("data", DATA)
def test_data_configs_compose(compose, data):
    extra = ["data.path=metrics.parquet"] if data == "file" else []
    cfg = compose("model=tft", "trainer=cpu", f"data=tft/{data}", *extra)
    assert cfg.model._target_ == "zoo.tft.TFTModule" and cfg.data._target_ == "zoo.tft.MetricsDataModule"
    assert cfg.data.encoder_length > 0 and cfg.data.prediction_length > 0
    if data not in ("synthetic", "file", "prometheus"):  # prometheus reads data.url, no file
        assert str(cfg.data.path).endswith(
            ("machine_usage.csv", "bitbrains_rnd_2013-7", "nab_aws", "ETTh1.csv")
        )
        assert "/shared/data/metrics/" in str(cfg.data.path)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose(compose, experiment):
    cfg = compose(f"experiment={experiment}", "trainer=cpu")
    assert cfg.model._target_ == "zoo.tft.TFTModule"
    assert cfg.trainer.max_steps > 0 and cfg.trainer.gradient_clip_val > 0
    assert cfg.model.optim.reduce_on_plateau_patience == 4
    if experiment != "tft_small":
        assert cfg.callbacks.early_stopping.patience == 8  # monitor: ${monitor}, the model's val/loss


def test_hparams_search_composes(compose):
    cfg = compose("model=tft", "hparams_search=tft_optuna")
    assert cfg.hydra.sweeper.direction == "minimize" and cfg.optimized_metric == "val/loss"
    assert "model.net.hidden_size" in cfg.hydra.sweeper.params


def test_default_model_is_multi_target_and_monitors_val_loss(compose):
    cfg = compose("model=tft", "trainer=cpu")
    assert list(cfg.data.targets) == ["cpu_percent", "memory_percent", "disk_percent", "load_average"]
    assert cfg.model.precision == "32-true" and cfg.data.num_workers == "auto"


def test_etth1_uses_standard_split(compose):
    cfg = compose("experiment=tft_etth1", "trainer=cpu")
    assert list(cfg.data.split_rows) == [12 * 30 * 24, 4 * 30 * 24, 4 * 30 * 24]
    assert cfg.data.standardize and cfg.data.prediction_length == 96


def test_datamodule_instantiates_from_config(compose, cache_dir):
    cfg = compose("experiment=tft_small", "trainer=cpu")
    dm = instantiate(cfg.data)
    assert dm.family == "tft" and dm.encoder_length == 24 and dm.loader == "fast"


@pytest.mark.parametrize(
    ("config_name", "settings"),
    [("monitor", "zoo.tft.monitor:MonitorSettings"), ("collect", "zoo.tft.collect:CollectSettings")],
)
def test_monitor_and_collect_yaml_state_the_typed_settings_defaults(compose, config_name, settings):
    """One source for the monitor's and the collector's defaults: the dataclass defines each, the YAML states
    the same value (so `Monitor(...)` in Python and `python -m zoo.monitor` behave alike)."""
    import dataclasses
    import importlib

    module, _, name = settings.partition(":")
    cls = getattr(importlib.import_module(module), name)
    cfg = compose(config_name=config_name)
    for f in dataclasses.fields(cls):
        assert f.name in cfg, f"conf/{config_name}.yaml lacks {f.name}"
        assert cfg[f.name] == f.default, (
            f"conf/{config_name}.yaml {f.name}={cfg[f.name]}, {name} default {f.default}"
        )
    where = {"task_name", "seed", "family", "export", "ckpt_path", "out", "paths", "hydra"}
    assert set(cfg) - where == {f.name for f in dataclasses.fields(cls)}, "a YAML key the settings lack"
