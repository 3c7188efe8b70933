"""Experiment trackers besides TensorBoard/CSV: ``logger=mlflow`` and ``logger=wandb`` (conf/logger/), each
Lightning's own logger with the zoo's defaults (a store inside the run folder, nothing sent anywhere
until asked), and the lines ``zoo.train`` prints about where each logger wrote (`where`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger as _MLFlowLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger


class MLFlowLogger(_MLFlowLogger):
    """Lightning's MLFlowLogger. `tracking_uri` None: a local store inside the run folder
    (``<run_dir>/mlflow/mlflow.db``, artifacts in ``<run_dir>/mlflow/artifacts``; MLflow 3 refuses its
    old plain-folder store, so the local store is SQLite); a server's URI (``http://host:5000``) or any
    other store otherwise, with the artifact location the server gives the experiment.

    With ``log_model=True`` Lightning uploads the checkpoints of the checkpoint callback that saved last;
    the zoo has two (``model_checkpoint``: the best and last.ckpt; ``step_checkpoint``: last-step.ckpt
    every N steps), so a monitored one, once it has saved, is the one kept: the best checkpoint is
    always among the artifacts."""

    def __init__(
        self,
        run_dir: str | Path,
        tracking_uri: str | None = None,
        artifact_location: str | None = None,
        **kwargs: Any,
    ):
        if not tracking_uri:
            folder = Path(run_dir) / "mlflow"
            folder.mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{folder.resolve() / 'mlflow.db'}"
            artifact_location = artifact_location or (folder.resolve() / "artifacts").as_uri()
        super().__init__(tracking_uri=tracking_uri, artifact_location=artifact_location, **kwargs)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        kept = self._checkpoint_callback
        if kept is not None and kept.monitor is not None and checkpoint_callback.monitor is None:
            return
        super().after_save_checkpoint(checkpoint_callback)


class WandbLogger(_WandbLogger):
    """Lightning's WandbLogger, offline unless ``offline=false``: the run is written under
    ``<save_dir>/wandb/offline-run-*`` and ``wandb sync <that folder>`` uploads it later. `finish` closes
    the run once ``zoo.train`` is done with it (validation and test after fit log to it too), so its
    files are complete when the command returns."""

    def __init__(self, *args: Any, quiet: bool = True, **kwargs: Any):
        if quiet:  # its run summary and sync hint: zoo.train prints where the run went in one line
            kwargs.setdefault("settings", {"quiet": True, "silent": True})
        super().__init__(*args, **kwargs)

    def finish(self) -> None:
        if self._experiment is not None:
            self._experiment.finish()


def where(loggers: list[Any]) -> list[str]:
    """One line per tracker: where it wrote, and how to look at it."""
    lines = []
    for lg in loggers:
        if isinstance(lg, _MLFlowLogger):
            uri = lg._tracking_uri
            ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else uri
            lines.append(f"mlflow:        {uri} (experiment {lg.experiment_id}, run {lg.run_id}; {ui})")
        elif isinstance(lg, _WandbLogger):
            run = lg._experiment
            folder = Path(run.dir).parent if run is not None else lg.save_dir
            how = f"wandb sync {folder}" if lg._offline else (getattr(run, "url", None) or "online")
            lines.append(f"wandb:         {folder} ({'offline; ' if lg._offline else ''}{how})")
    return lines


def finish(loggers: list[Any]) -> None:
    """Close the trackers that keep a run open after training (W&B)."""
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.finish()
