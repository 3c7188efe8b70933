"""zoo: three model families (GPT LM, multi-stream event predictor, TFT forecaster) on one
Lightning + Hydra convention."""

__version__ = "0.1.0"
