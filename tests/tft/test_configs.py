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


def test_data_base_yaml_states_the_typed_settings_defaults():
    """One source for each data default: `DataConfig` defines it; conf/data/tft/_base.yaml states the same
    value for every setting it names (each data config then sets what its dataset needs)."""
    import dataclasses

    import yaml

    from zoo.tft.settings import DataConfig

    defaults = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(DataConfig)
    }
    stated = yaml.safe_load((CONF / "data" / "tft" / "_base.yaml").read_text())
    shared = {
        "_target_",
        "batch_size",
        "num_workers",
        "pin_memory",
        "persistent_workers",
        "seed",
        "cache_dir",
    }
    assert set(stated) - shared <= set(defaults), "a setting DataConfig lacks"
    assert len(set(stated) & set(defaults)) >= 20, "the base config states the defaults"
    for key in set(stated) & set(defaults):
        assert stated[key] == defaults[key], (
            f"_base.yaml {key}={stated[key]}, DataConfig default {defaults[key]}"
        )


def test_typed_settings_refuse_bad_values_in_one_line():
    from zoo.core.errors import ZooError
    from zoo.tft.model import NetConfig
    from zoo.tft.module import OptimConfig, typed
    from zoo.tft.settings import DataConfig

    for cls, values, message in (
        (NetConfig, {"hidden_size": 0}, r"model.net.hidden_size=0 must be a positive integer"),
        (NetConfig, {"dropout": 1.5}, r"model.net.dropout=1.5 must be in \[0, 1\)"),
        (NetConfig, {"hiden_size": 8}, r"model.net: unknown keys \['hiden_size'\]"),
        (OptimConfig, {"lr": 0}, r"model.optim.lr=0 must be > 0"),
        (
            OptimConfig,
            {"reduce_on_plateau_factor": 1.0},
            r"model.optim.reduce_on_plateau_factor=1.0 must be in",
        ),
    ):
        with pytest.raises(ZooError, match=message):
            typed(cls, values, "model.net" if cls is NetConfig else "model.optim")
    with pytest.raises(ZooError, match="data.loader=quick: expected fast or stock"):
        DataConfig(loader="quick")
    assert DataConfig(targets="cpu_percent").targets == ["cpu_percent"]
