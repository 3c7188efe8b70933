"""Every model and experiment config composes, pairs a model with data of its own family, and (for the
GPT family, on the meta device) instantiates."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from zoo.core.cli import available
from zoo.core.family import family, family_of_config, registry

MODELS = available("model")
EXPERIMENTS = available("experiment")


@pytest.mark.parametrize(
    "overrides", [[f"model={m}"] for m in MODELS] + [[f"experiment={e}"] for e in EXPERIMENTS], ids=str
)
def test_config_composes_and_instantiates(compose, overrides):
    cfg = compose(*overrides)
    model_family = family_of_config(cfg.model, "model")
    assert model_family in registry() and model_family == family_of_config(cfg.data, "data")
    assert family(model_family).__name__ == cfg.model._target_.rsplit(".", 1)[-1]
    for name, node in cfg.callbacks.items():
        if node is not None:
            assert instantiate(node) is not None, name
    if model_family != "gpt":
        return  # other families need their prepared data; their own tests instantiate them
    datamodule = instantiate(cfg.data)
    assert datamodule.family == "gpt"
    with torch.device("meta"):
        model = instantiate(
            cfg.model,
            _convert_="all",
            vocab_size=cfg.data.get("vocab_size") or 50257,
            block_size=cfg.data.block_size,
            tokenizer_json=None,
        )
    assert model.net.cfg.n_layer == cfg.model.net.n_layer
    assert model.net.cfg.block_size == cfg.data.block_size


def test_every_group_default_is_listed():
    for group in (
        "model",
        "trainer",
        "callbacks",
        "logger",
        "experiment",
        "hparams_search",
        "debug",
        "paths",
    ):
        assert available(group), group
    assert {"cpu", "gpu", "ddp", "ddp_sim", "fsdp", "multinode"} <= set(available("trainer"))
    assert {"tensorboard", "csv", "none"} <= set(available("logger"))


def test_fsdp_trainer_config_builds_a_wrapping_strategy(compose):
    from lightning.pytorch.strategies import FSDPStrategy

    from zoo.core.errors import ZooError
    from zoo.core.strategies import fsdp
    from zoo.gpt.model import Block

    cfg = compose("trainer=fsdp")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {Block}
    with pytest.raises(ZooError, match="trainer.strategy.wrap: cannot import zoo.gpt.model.Nope"):
        fsdp(wrap=["zoo.gpt.model.Nope"])


@pytest.mark.parametrize(
    ("model", "section", "settings"),
    [
        ("gpt", "optim", "zoo.gpt.module:OptimConfig"),
        ("gpt", "net", "zoo.gpt.model:GPTConfig"),
        ("event_predictor", "optim", "zoo.events.module:OptimConfig"),
        ("event_predictor", "net", "zoo.events.model:NetConfig"),
        ("tft", "optim", "zoo.tft.module:OptimConfig"),
        ("tft", "net", "zoo.tft.model:NetConfig"),
    ],
)
def test_model_yaml_states_the_typed_settings_defaults(compose, model, section, settings):
    """One source for each default: the typed settings (dataclass) define it; conf/model/<model>.yaml
    states the same value, never another one."""
    import dataclasses
    import importlib

    module, _, name = settings.partition(":")
    defaults = {f.name: f.default for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    stated = compose(f"model={model}").model[section]
    assert stated, f"conf/model/{model}.yaml states no {section}"
    for key, value in stated.items():
        expected = defaults[key]
        expected = list(expected) if isinstance(expected, tuple) else expected
        assert value == expected, (
            f"conf/model/{model}.yaml {section}.{key}={value}, {name} default {expected}"
        )
