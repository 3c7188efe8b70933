"""`python -m zoo.collect [family=tft] out=<folder> [interval=10] [samples=N] [key=value ...]`: sample this
machine into data a family trains on, through the family's `ZooModule.collect` (the TFT's:
`zoo.tft.collect`; keys and defaults: conf/collect.yaml).

    python -m zoo.collect out=data/metrics/me interval=10            # until Ctrl-C
    python -m zoo.train model=tft data=tft/file data.path=data/metrics/me data.step=1min
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from zoo.core.cli import hydra_entry


def collect(cfg: DictConfig) -> Any:
    from zoo.core.family import family

    return family(str(cfg.family)).collect(cfg)


main = hydra_entry("collect", collect)


if __name__ == "__main__":
    main()
