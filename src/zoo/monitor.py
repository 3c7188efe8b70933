"""`python -m zoo.monitor [family=tft] export=<run>/export | ckpt_path=<checkpoint | run folder> [key=value ...]`:
forecast this machine live with a trained model, through the family's `ZooModule.watch` (the TFT's:
`zoo.tft.monitor`; keys and defaults: conf/monitor.yaml).

    python -m zoo.monitor export=logs/train/runs/<run>/export interval=10 forecast_every=6 out=data/monitor/me
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from zoo.core.cli import hydra_entry


def monitor(cfg: DictConfig) -> Any:
    from zoo.core.family import family

    return family(str(cfg.family)).watch(cfg)


main = hydra_entry("monitor", monitor)


if __name__ == "__main__":
    main()
