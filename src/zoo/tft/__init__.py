"""TFT family: multi-target server-metrics forecasting with pytorch-forecasting's Temporal Fusion Transformer."""

from zoo.tft.datamodule import MetricsDataModule
from zoo.tft.module import TFTModule

__all__ = ["MetricsDataModule", "TFTModule"]
