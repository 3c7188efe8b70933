"""GPT decoder-only language models: network (model.py), LightningModule (module.py), text data
(datamodule.py, sources.py, tokenizer.py), export and sampling."""

from zoo.gpt.datamodule import TextDataModule
from zoo.gpt.model import GPT, GPTConfig
from zoo.gpt.module import GPTModule

__all__ = ["GPT", "GPTConfig", "GPTModule", "TextDataModule"]
