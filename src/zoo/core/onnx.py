"""What the families' ONNX exports share: a quiet dynamo exporter and an onnxruntime CPU session whose
errors are one line naming the command that writes ``model.onnx``."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zoo.core.errors import ZooError


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The dynamo exporter's chatter off: registry notes (no torchvision), its own deprecation and axis
    naming warnings, the ONNX optimizer's notes. Failures still raise, and `save_onnx` checks the result."""
    names = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning, UserWarning):
                warnings.filterwarnings(
                    "ignore", category=category, module=r"(torch|onnx|onnxscript|copyreg)"
                )
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of `path`; a one-line error naming the command that writes it."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ZooError(
            f"backend=onnx: {path.parent} has no {path.name}: run python -m zoo.export ckpt_path=... format=onnx "
            "and point ckpt_path= at that export folder"
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about graph rewrites it skipped are not the user's business
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # a truncated or foreign file: onnxruntime's own message, on one line
        detail = " ".join(str(err).split())[:200]
        raise ZooError(f"{path}: onnxruntime cannot load it ({type(err).__name__}: {detail})") from None


def export_onnx_file(run: Any, name: str = "model.onnx") -> Path:
    """`name` in the export folder `run` (a `zoo.core.family.Run`) was loaded from; a checkpoint has none."""
    folder = getattr(run, "export_dir", None)
    if folder is None:
        where = getattr(run, "path", "the checkpoint")
        raise ZooError(
            f"backend=onnx needs an export folder with {name}, not the checkpoint {where}: run "
            f"python -m zoo.export ckpt_path={where} format=onnx, then predict with ckpt_path=<that folder>"
        )
    return Path(folder) / name
