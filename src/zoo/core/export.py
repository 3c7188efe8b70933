"""Export folders: the family writes its files (`ZooModule.export`), the core adds the model card
(README.md) and, last, the ``zoo.json`` marker (family, formats, the run's full config) that
`zoo.core.family.load_run` recognizes an export by. A folder without the marker is an unfinished export."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from zoo.core.errors import ZooError
from zoo.core.family import EXPORT_MARKER, ZooModule, check_export_format


def _plain(config: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):  # composed from Python, a config carries Hydra's own section too
        keys = [k for k in config if k != "hydra"]
        return OmegaConf.to_container(OmegaConf.masked_copy(config, keys), resolve=True)  # type: ignore[return-value]
    return dict(config or {})


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def model_card(
    family: str,
    folder: Path,
    config: dict[str, Any],
    formats: list[str],
    run_dir: Path | None,
    how_to_predict: str = ZooModule.how_to_predict,
    onnx: dict[str, Any] | None = None,
) -> str:
    """README.md of an export: what it is, how it was trained, how well it does, how to use it
    (`how_to_predict`: the family's `ZooModule.how_to_predict`)."""
    import yaml

    info = config.get("zoo_run") or {}
    train = _read_json(run_dir / "metrics.json") if run_dir else {}
    evaluation = _read_json(run_dir / "eval_metrics.json") if run_dir else {}
    metrics = train.get("metrics") or {}
    lines = [
        f"# zoo {family} model",
        "",
        f"- family: `{family}`; formats: {', '.join(f'`{f}`' for f in formats)}",
        f"- recipe: `{info.get('choices', {}).get('experiment') or 'defaults'}` "
        f"(model `{info.get('choices', {}).get('model', '?')}`, data `{info.get('choices', {}).get('data', '?')}`)",
        f"- data fingerprint: `{train.get('data_fingerprint') or info.get('data_fingerprint') or 'unknown'}`",
        f"- trained: {train.get('global_step', '?')} steps, {train.get('wall_seconds', '?')} s",
        *_quantization_line(onnx),
        "",
        "## Metrics",
        "",
    ]
    lines += _metrics_lines(metrics, evaluation)
    overrides = " ".join(info.get("overrides") or [])
    lines += [
        *_use_lines(family, folder, formats, how_to_predict),
        "## Reproduce",
        "",
        "```bash",
        f"python -m zoo.train {overrides}".rstrip(),
        "```",
        "",
        "## Full config",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _metrics_lines(metrics: dict[str, Any], evaluation: dict[str, Any]) -> list[str]:
    """The card's metrics: training's last values, `zoo.eval`'s (model and baselines), throughput."""
    lines: list[str] = []
    quality = {k: v for k, v in sorted(metrics.items()) if not k.startswith("throughput/")}
    speed = {k: v for k, v in sorted(metrics.items()) if k.startswith("throughput/")}
    if quality:
        lines += ["At the end of training:", "", "| metric | value |", "|---|---|"]
        lines += [f"| `{k}` | {v:.6g} |" for k, v in quality.items()]
        lines.append("")
    if evaluation.get("metrics"):
        lines += [f"`python -m zoo.eval` on the {evaluation.get('split', '?')} split (model and baselines):", "",
                  "| metric | value |", "|---|---|"]  # fmt: skip
        lines += [f"| `{k}` | {v:.6g} |" for k, v in sorted(evaluation["metrics"].items())]
        lines.append("")
    if not quality and not evaluation.get("metrics"):
        lines += ["No metrics were recorded with this run.", ""]
    if speed:
        lines += (
            ["Throughput (last logged window):", ""] + [f"- `{k}`: {v:.6g}" for k, v in speed.items()] + [""]
        )
    return lines


def _use_lines(family: str, folder: Path, formats: list[str], how_to_predict: str) -> list[str]:
    """The card's "Use": the family's predict command, ONNX and transformers where exported, load_run."""
    return [
        "## Use",
        "",
        "```bash",
        how_to_predict.format(folder=folder),
        *([f"python -m zoo.predict ckpt_path={folder} backend=onnx ..."] if "onnx" in formats else []),
        *(  # a Hugging Face transformers folder: loadable without the zoo
            [
                f"python -c \"from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('{folder}')\""
            ]
            if "hf" in formats
            else []
        ),
        "```",
        "",
        "```python",
        "from zoo.core.family import load_run",
        "",
        f'run = load_run("{folder}")   # run.module: the {family} LightningModule, in eval mode',
        "```",
        "",
    ]


def _quantization_line(onnx: dict[str, Any] | None) -> list[str]:
    if not onnx or onnx.get("quantize") in (None, "none"):
        return []
    return [
        f"- quantization: {onnx['quantize']} (`{onnx['file']}`, {onnx['bytes'] / 1e6:.3g} MB vs "
        f"{onnx['float_bytes'] / 1e6:.3g} MB float; {onnx['method']}; int8 ops: {', '.join(onnx['ops'])}); "
        "`backend=onnx` runs it"
    ]


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def export_run(
    module: ZooModule,
    out_dir: str | Path,
    config: Any,
    fmt: str = "safetensors",
    datamodule: Any = None,
    run_dir: Path | None = None,
    quantize: str | None = None,
) -> Path:
    """Export `module` into `out_dir` in format `fmt`, with its model card and marker; returns the folder.
    `quantize` ``int8`` (format onnx only) adds ``model.int8.onnx`` (`zoo.core.onnx.quantize_int8`)."""
    from zoo.core.onnx import FLOAT_FILE, INT8_FILE, QUANTIZE_CHOICES, quantize_int8, self_contained

    check_export_format(fmt)
    if fmt not in module.export_formats:
        raise ZooError(
            f"format={fmt}: the {module.family} family exports {', '.join(module.export_formats)}; expected one of those"
        )
    quantize = str(quantize or "none")
    if quantize not in QUANTIZE_CHOICES:
        raise ZooError(f"quantize={quantize}: expected one of {', '.join(QUANTIZE_CHOICES)}")
    if quantize != "none" and fmt != "onnx":
        raise ZooError(f"quantize={quantize} quantizes the ONNX graph: add format=onnx (format is {fmt})")
    out = Path(out_dir)
    marker = out / EXPORT_MARKER
    if marker.exists():  # re-exporting: the folder is unfinished until the new marker is written
        marker.unlink()
    folder = Path(module.export(out, datamodule, format=fmt))
    plain = _plain(config)
    formats = (
        ["hf"] if fmt == "hf" else ["safetensors"] + (["onnx"] if (folder / FLOAT_FILE).is_file() else [])
    )
    if "onnx" in formats:
        self_contained(folder / FLOAT_FILE)
    onnx = quantize_int8(folder) if quantize == "int8" else None
    if onnx is None:  # an int8 graph of an earlier export would no longer match these weights
        (folder / INT8_FILE).unlink(missing_ok=True)
    card = model_card(module.family, folder, plain, formats, run_dir, type(module).how_to_predict, onnx)
    _write(folder / "README.md", card)
    payload = {
        "family": module.family,
        "formats": formats,
        "config": plain,
        **({"onnx": onnx} if onnx else {}),
    }
    _write(marker, json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return folder
