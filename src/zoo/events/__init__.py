"""Multi-stream event predictor: per-stream Transformer encoders, a decoder that cross-attends to each
stream's last valid vector, one head per field (model.py, module.py); event logs, schemas and
vocabularies (datamodule.py, schema.py, sources.py, synthetic.py); evaluation protocol and baselines
(evaluate.py); `python -m benchmarks.events`."""

from zoo.events.datamodule import EventDataModule
from zoo.events.model import EventPredictor, NetConfig
from zoo.events.module import EventModule

__all__ = ["EventDataModule", "EventModule", "EventPredictor", "NetConfig"]
