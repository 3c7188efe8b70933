"""`python -m zoo.export ckpt_path=<checkpoint | run folder> [format=safetensors|onnx] [quantize=int8] [out=folder]`.

Writes the family's self-contained export folder (weights and the config/tokenizer/vocab/normalizer files
it needs; ``format=onnx`` adds ``model.onnx``, ``quantize=int8`` also ``model.int8.onnx``), a model card (README.md) and the ``zoo.json`` marker that
`zoo.predict`, `zoo.eval` and `zoo.monitor` recognize an export folder by.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from zoo.core.cli import hydra_entry


def export(cfg: DictConfig) -> Path:
    from zoo.core.export import export_run
    from zoo.core.family import check_export_format, load_run

    fmt = check_export_format(str(cfg.format))
    run = load_run(cfg.ckpt_path)
    out = Path(cfg.out) if cfg.get("out") else Path(cfg.paths.output_dir) / "export"
    folder = export_run(
        run.module,
        out,
        run.config,
        fmt,
        run_dir=run.path.parent.parent if run.kind == "checkpoint" else None,
        quantize=cfg.get("quantize"),
    )
    print(
        f"[zoo] export ({fmt}{', ' + cfg.quantize if cfg.get('quantize') not in (None, 'none') else ''}): {folder}"
    )
    return folder


main = hydra_entry("export", export)


if __name__ == "__main__":
    main()
