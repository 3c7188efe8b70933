"""`python -m zoo.generate ckpt_path=... prompt="..." max_new_tokens=... temperature=... top_k=...`

An alias of ``python -m zoo.predict`` for GPT runs (checkpoint, run folder or export folder): the same
code (`zoo.gpt.predict`), the same keys (conf/generate.yaml); without ``prompt=``/``input=`` it samples
from an empty context.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

from zoo.core.cli import hydra_entry
from zoo.core.errors import ZooError


def _request(cfg: DictConfig):
    from zoo.core.family import load_run

    run = load_run(cfg.ckpt_path)
    if run.family != "gpt":
        raise ZooError(
            f"ckpt_path={run.path}: a model of the {run.family} family ({run.cls.__module__}.{run.cls.__qualname__}); "
            "zoo.generate samples GPT models only (python -m zoo.predict takes every family)"
        )
    if cfg.get("prompt") is None and not cfg.get("input"):
        with open_dict(cfg):
            cfg.prompt = ""  # the end-of-text token (or id 0) as the only context
    return run


def generate(cfg: DictConfig) -> list[str]:
    """The sampled texts (prompt + continuation), one per prompt and sample; nothing printed."""
    from zoo.gpt.predict import continuations

    run = _request(cfg)
    return [r["text"] for r in continuations(run.module, cfg, run)]


def _print_samples(cfg: DictConfig) -> list[str]:
    run = _request(cfg)
    return run.module.predict(cfg, Path(cfg.paths.output_dir), run)


main = hydra_entry("generate", _print_samples)


if __name__ == "__main__":
    main()
