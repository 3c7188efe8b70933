"""What the families' ONNX exports share: a quiet dynamo exporter, an onnxruntime CPU session whose
errors are one line naming the command that writes ``model.onnx``, and the int8 copy of an export
(``quantize=int8``: `quantize_int8`) that the session picks when the export's zoo.json names it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
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


FLOAT_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
QUANTIZE_CHOICES = ("none", "int8")
INT8_OPS = ("MatMul", "Gemm")
"""What ``quantize=int8`` turns into int8: the matrix products whose second operand is a weight (every
linear layer: attention projections, MLPs, the GPT head, TFT's gated residual networks). What stays float,
and why: embeddings (Gather, a lookup, no arithmetic to speed up; GPT's is tied to the head, whose MatMul
reads an int8 copy), layer norms, softmax, residual adds, activations x activations products (attention
scores: no weight to quantize ahead of time; dynamic mode leaves them, MatMulConstBOnly) and TFT's LSTMs
(the option promises the linear layers; onnxruntime's int8 LSTM is another kernel with its own trade-off)."""


PROTOBUF_LIMIT = 2**31 - 1  # bytes: a larger graph keeps its weights in a data file beside it


def self_contained(path: str | Path) -> Path:
    """Make the ``.onnx`` at `path` carry its own weights. The dynamo exporter writes large initializers to
    ``<file>.data`` named after the file it wrote (the families' ``model.onnx.tmp``), so the renamed
    ``model.onnx`` read weights from a ``model.onnx.tmp.data`` left beside it: one file to copy, measure
    and quantize instead. Graphs over protobuf's 2 GB keep them outside, in ``model.onnx.data``."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    stale = {
        entry.value
        for tensor in model.graph.initializer
        if uses_external_data(tensor)
        for entry in tensor.external_data
        if entry.key == "location"
    }
    if not stale:
        return path
    model = onnx.load(str(path))  # with the weights, read from beside `path`
    tmp = path.with_name(path.name + ".tmp")
    if model.ByteSize() < PROTOBUF_LIMIT:
        onnx.save(model, str(tmp))
    else:
        stale.discard(path.name + ".data")
        onnx.save(model, str(tmp), save_as_external_data=True, location=path.name + ".data")
    os.replace(tmp, path)
    for name in stale:  # only plain file names beside the graph: nothing outside the folder is touched
        if Path(name).name == name:
            (path.parent / name).unlink(missing_ok=True)
    return path


def quantize_int8(folder: str | Path) -> dict[str, Any]:
    """Write ``model.int8.onnx`` beside the export's float ``model.onnx``: onnxruntime's pre-processing
    (constant folding, the exporter's debug metadata dropped), then its dynamic quantization (int8
    weights, symmetric, one scale per output channel; activations quantized per batch at run time, so no
    calibration data is needed). Returns what zoo.json and the model card record."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder = Path(folder)
    source, target = folder / FLOAT_FILE, folder / INT8_FILE
    if not source.is_file():
        raise ZooError(f"quantize=int8: {folder} has no {FLOAT_FILE} to quantize (export with format=onnx)")
    tmp, pre = folder / (INT8_FILE + ".tmp"), folder / (INT8_FILE + ".pre.tmp")
    root = logging.getLogger()
    level = root.level
    try:
        # Its notes go to the root logger at INFO/WARNING (one per float tensor it leaves): the decisions
        # they describe are INT8_OPS' docstring, not news for each export.
        root.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # onnxruntime's recommended pre-processing: its graph optimizer folds constants (the decoder's
            # cross-attention splits its packed in_proj weight at run time, which hid those weights from
            # the quantizer) and drops the exporter's per-node debug metadata. Symbolic shape inference is
            # skipped: the graphs' dynamic axes are already named by the exporter.
            quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
            quantize_dynamic(pre, tmp, op_types_to_quantize=list(INT8_OPS), per_channel=True,
                             weight_type=QuantType.QInt8)  # fmt: skip
        _keep_metadata(source, tmp)
        os.replace(tmp, target)
    finally:
        root.setLevel(level)
        tmp.unlink(missing_ok=True)
        pre.unlink(missing_ok=True)
    return {
        "quantize": "int8",
        "file": INT8_FILE,
        "method": "onnxruntime quant_pre_process + quantize_dynamic (int8 weights per channel, dynamic activations)",
        "ops": list(INT8_OPS),
        "bytes": target.stat().st_size,
        "float_bytes": source.stat().st_size,
    }


def _keep_metadata(source: Path, target: Path) -> None:
    """The float graph's metadata (what readers check a graph against: TFT's lengths, targets, quantiles)
    on the int8 graph too, where the quantizer left it out."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    model = onnx.load(str(target))
    have = {p.key for p in model.metadata_props}
    if set(meta) <= have:
        return
    for key, value in meta.items():
        if key not in have:
            model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(target))


def exported_onnx(path: Path) -> Path:
    """The graph an export's reader should run for `path` (its ``model.onnx``): the int8 file where the
    folder's zoo.json says the export was quantized, else `path` itself."""
    marker = path.parent / "zoo.json"
    if path.name != FLOAT_FILE or not marker.is_file():
        return path
    try:
        named = (json.loads(marker.read_text()).get("onnx") or {}).get("file")
    except (OSError, ValueError, AttributeError):
        return path
    # Only the file names this module writes: nothing read from an export may point elsewhere.
    return path.parent / named if named == INT8_FILE and (path.parent / named).is_file() else path


def onnx_session(path: str | Path, threads: int | None = None, quantized: bool | None = None) -> Any:
    """An onnxruntime CPU session of `path`; a one-line error naming the command that writes it.
    `quantized` None: the int8 graph where the export is int8 (`exported_onnx`); False: `path` as given."""
    import onnxruntime as ort

    path = Path(path)
    if quantized is not False:
        path = exported_onnx(path)
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
