"""TimeSeriesDataSet parameters <-> plain JSON-able containers.

pytorch-forecasting keeps fitted normalizers and label encoders as Python objects inside its dataset
parameters and pickles them into checkpoints. The zoo loads checkpoints with ``weights_only=True`` and
exports without pickle, so the parameters travel as plain dicts/lists: each object is written as its
class path plus its attribute dict, and rebuilt only for classes of pytorch-forecasting and
scikit-learn's preprocessing module.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pandas as pd
import torch

from zoo.core.errors import ZooError

ALLOWED_MODULES = ("pytorch_forecasting.", "sklearn.preprocessing.")


def encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, int | float):
        return value
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, pd.DataFrame):
        return {
            "__dataframe__": {c: encode(value[c].to_numpy()) for c in value.columns},
            "index": encode(value.index.to_numpy()),
            "index_names": list(value.index.names),
            "columns": [str(c) for c in value.columns],
        }
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {"__items__": [[encode(k), encode(v)] for k, v in value.items()]}
    cls = type(value)
    path = f"{cls.__module__}.{cls.__qualname__}"
    if not path.startswith(ALLOWED_MODULES):
        raise ZooError(
            f"cannot store dataset parameter of type {path} (only pytorch-forecasting/sklearn objects)"
        )
    return {"__object__": path, "state": {k: encode(v) for k, v in vars(value).items()}}


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        return np.asarray(
            value["__ndarray__"], dtype=value["dtype"] if value["dtype"] != "object" else object
        )
    if "__tensor__" in value:
        return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]))
    if "__tuple__" in value:
        return tuple(decode(v) for v in value["__tuple__"])
    if "__items__" in value:
        return {_hashable(decode(k)): decode(v) for k, v in value["__items__"]}
    if "__dataframe__" in value:
        index = decode(value["index"])
        frame = pd.DataFrame(
            {c: decode(v) for c, v in value["__dataframe__"].items()}, columns=value["columns"]
        )
        frame.index = (
            pd.Index(index, name=value["index_names"][0])
            if len(value["index_names"]) == 1
            else pd.MultiIndex.from_tuples(index, names=value["index_names"])
        )
        return frame
    if "__object__" in value:
        path = value["__object__"]
        if not path.startswith(ALLOWED_MODULES):
            raise ZooError(f"refusing to rebuild an object of type {path} from stored dataset parameters")
        module, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module), name, None)
        # The attribute itself must be a class of those libraries, not something they merely import.
        if not isinstance(cls, type) or not f"{cls.__module__}.".startswith(ALLOWED_MODULES):
            raise ZooError(f"refusing to rebuild an object of type {path} from stored dataset parameters")
        obj = cls.__new__(cls)
        obj.__dict__.update({k: decode(v) for k, v in value["state"].items()})
        return obj
    return {k: decode(v) for k, v in value.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key
