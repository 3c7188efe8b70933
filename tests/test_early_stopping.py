"""``callbacks=[default,early_stopping]`` really stops a run whose monitored metric stalls: with lr=0 the
weights never move, so val/loss repeats exactly and the run ends `patience` validations after the first,
long before max_steps."""

from __future__ import annotations

import json

from zoo.core.config import compose_config

TINY = ["data=gpt/synthetic", "data.synthetic.n_tokens=20000", "model.net.n_layer=1", "model.net.n_embd=16",
        "model.net.n_head=2", "data.block_size=16", "data.batch_size=4", "trainer.limit_val_batches=1"]  # fmt: skip


def test_early_stopping_stops_a_stalled_run(tmp_path, cache_dir):
    from zoo.train import train

    cfg = compose_config([*TINY, "callbacks=[default,early_stopping]", "~callbacks.rich_progress_bar",
                          "callbacks.early_stopping.patience=2", "model.optim.lr=0", "model.optim.min_lr=0",
                          "trainer.max_steps=400", "trainer.val_check_interval=2", "logger=none",
                          "trainer.enable_progress_bar=false", f"paths.cache_dir={cache_dir}"],
                         output_dir=tmp_path / "run")  # fmt: skip
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # Validations at steps 2, 4, 6: the first sets the best, the next two do not improve on it -> stop.
    assert metrics["global_step"] == 6, metrics
