"""GPT decoder-only language models: network (model.py), LightningModule (module.py), text data
(datamodule.py, sources.py, tokenizer.py, prep.py), export and sampling."""

from importlib import import_module
from typing import Any

__all__ = ["GPT", "GPTConfig", "GPTModule", "TextDataModule"]

# Resolved on first use: the data prep's tokenizing workers are fresh interpreters that import
# zoo.gpt.prep, and must not pay for torch and Lightning to get there.
_WHERE = {"GPT": "model", "GPTConfig": "model", "GPTModule": "module", "TextDataModule": "datamodule"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"zoo.gpt.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'zoo.gpt' has no attribute {name!r}")
