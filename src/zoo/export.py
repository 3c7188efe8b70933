"""`python -m zoo.export ckpt_path=<checkpoint | run folder | export folder> [format=safetensors|onnx|hf] [quantize=int8] [out=folder]`.

Writes the family's self-contained export folder (weights and the config/tokenizer/vocab/normalizer files
it needs; ``format=onnx`` adds ``model.onnx``, ``quantize=int8`` also ``model.int8.onnx``), a model card (README.md) and the ``zoo.json`` marker that
`zoo.predict`, `zoo.eval` and `zoo.monitor` recognize an export folder by.

Without ``out=`` the export goes where the rest of the zoo looks for it: ``<run>/export`` for a run folder or
one of its checkpoints, the folder itself for an export folder.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from zoo.core.cli import hydra_entry


def run_folder(checkpoint: Path) -> Path | None:
    """The training run a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), or None for a loose file."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def default_out(path: Path, kind: str, output_dir: Path) -> Path:
    """Where ``out=null`` exports: the run's ``export/`` folder (so ``ckpt_path=<run>/export`` finds it), the
    export folder itself when re-exporting one (e.g. adding model.onnx), else this command's run folder."""
    if kind == "export":
        return path
    run = run_folder(path)
    return (run if run is not None else output_dir) / "export"


def export(cfg: DictConfig) -> Path:
    from zoo.core.export import export_run
    from zoo.core.family import check_export_format, load_run

    fmt = check_export_format(str(cfg.format))
    run = load_run(cfg.ckpt_path)
    # The training run, whose metrics the model card shows (an export folder's run: the folder holding it).
    run_dir = run_folder(run.path) if run.kind == "checkpoint" else run.path.parent
    if run_dir is not None and not (run_dir / "metrics.json").is_file():
        run_dir = None
    out = Path(cfg.out) if cfg.get("out") else default_out(run.path, run.kind, Path(cfg.paths.output_dir))
    folder = export_run(run.module, out, run.config, fmt, run_dir=run_dir, quantize=cfg.get("quantize"))
    quantized = f", {cfg.quantize}" if cfg.get("quantize") not in (None, "none") else ""
    print(f"[zoo] export ({fmt}{quantized}): {folder}")
    return folder


main = hydra_entry("export", export)


if __name__ == "__main__":
    main()
