"""`python -m zoo.predict ckpt_path=<checkpoint | run folder | export folder> ...`: predictions of any family.

The run is loaded by `zoo.core.family.load_run`; the request keys (conf/predict.yaml) are the family's:

    python -m zoo.predict ckpt_path=run/ prompt="To be" max_new_tokens=100       # GPT continuations
    python -m zoo.predict ckpt_path=run/ input=history.csv k=5                    # next K events
    python -m zoo.predict ckpt_path=run/export input=recent.csv backend=onnx     # TFT quantile forecast
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from zoo.core.cli import hydra_entry
from zoo.core.errors import ZooError

BACKENDS = ("torch", "onnx")


def predict(cfg: DictConfig) -> Any:
    from zoo.core.family import load_run

    if cfg.get("backend", "torch") not in BACKENDS:
        raise ZooError(f"backend={cfg.backend}: expected one of {', '.join(BACKENDS)}")
    run = load_run(cfg.ckpt_path)
    return run.module.predict(cfg, Path(cfg.paths.output_dir), run)


main = hydra_entry("predict", predict)


if __name__ == "__main__":
    main()
