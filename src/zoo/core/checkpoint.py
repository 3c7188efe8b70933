"""Checkpoints that survive crashes: atomic writes, safe loads, finding the newest one, and refusing to
resume a run with settings it was not trained with. Documented in docs/reliability.md."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from zoo.core.errors import ZooError

TMP_MARK = ".partial-"


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """torch.save to a temporary file beside `path`, fsync it, then rename it over `path`.

    A kill at any moment leaves either the previous file or the new one, never half of one. The temporary
    file sits in the same folder, so the rename cannot cross filesystems (Lightning's own save goes
    through a temporary file in /tmp, and a move from there is a copy).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:  # the rename itself must reach the disk too
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(
    path: str | os.PathLike[str], map_location: Any = "cpu", key: str = "ckpt_path", mmap: bool = False
) -> dict[str, Any]:
    """torch.load with weights_only=True; a missing, truncated or foreign file is a one-line ZooError."""
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"{key}={path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as err:
        # torch's first sentence says what broke; the rest is advice about torch internals.
        reason = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        if "weights only load failed" in str(err).lower() or "Unsupported global" in str(err):
            reason = "it holds Python objects beyond tensors and plain containers (refused: loading could run code)"
        raise ZooError(
            f"{key}={path}: not a readable checkpoint ({reason[:160]}): expected a complete .ckpt written by "
            "zoo.train (the file may be truncated or corrupt; an earlier checkpoint of the run may still load)"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ZooError(
            f"{key}={path}: not a Lightning checkpoint (no state_dict): expected a .ckpt written by zoo.train"
        )
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO: atomic local writes, weights_only loads with one-line errors."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote filesystems keep Lightning's fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Callable | Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return load_checkpoint(path, map_location=map_location or "cpu")


def checkpoints_in(folder: Path) -> list[Path]:
    """Complete checkpoints under `folder` (partial writes excluded), oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.rglob("*.ckpt") if TMP_MARK not in p.name and p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"))


def best_checkpoint_of_run(run_dir: Path) -> Path | None:
    """A run folder's best checkpoint (metrics.json's ``best_model_path``), else its newest one."""
    import json

    try:
        best = json.loads((run_dir / "metrics.json").read_text()).get("best_model_path")
    except (OSError, ValueError, AttributeError):
        best = None
    if best and Path(best).is_file():
        return Path(best)
    found = checkpoints_in(run_dir / "checkpoints")
    return found[-1] if found else None


def resolve_ckpt_path(value: Any, output_dir: Path, runs_root: Path | None) -> str | None:
    """`ckpt_path=last` (or `auto`): the newest checkpoint of this run folder, else of the newest earlier run
    under `runs_root` that has one. A folder means its newest checkpoint. `auto` with none found starts fresh;
    `last` with none found is an error."""
    if value in (None, "", "null"):
        return None
    text = str(value)
    if text in ("last", "auto"):
        candidates = checkpoints_in(output_dir / "checkpoints")
        if not candidates and runs_root is not None and runs_root.is_dir():
            runs = sorted(
                (d for d in runs_root.iterdir() if d.is_dir() and d.resolve() != output_dir.resolve()),
                key=lambda d: d.stat().st_mtime_ns,
            )
            for run in reversed(runs):
                candidates = checkpoints_in(run / "checkpoints")
                if candidates:
                    break
        if candidates:
            return str(candidates[-1])
        if text == "auto":
            return None
        where = f"{output_dir / 'checkpoints'}" + (f" or any run under {runs_root}" if runs_root else "")
        raise ZooError(f"ckpt_path=last: no checkpoint found in {where}: expected a run that saved one")
    path = Path(text)
    if path.is_dir():
        found = checkpoints_in(path / "checkpoints") or checkpoints_in(path)
        if not found:
            raise ZooError(
                f"ckpt_path={path}: the folder holds no .ckpt file: expected a run folder or a .ckpt file"
            )
        return str(found[-1])
    return text


# What a resume compares: model, data and seed in full (but for the keys below, which do not alter what
# is computed), and the trainer settings that decide the batch layout and numerics. Lengths
# (max_steps, max_epochs, max_time) and display settings may change freely.
COMPARED_TRAINER_KEYS = ("accumulate_grad_batches", "precision", "devices", "num_nodes")
RESUMABLE_CHANGES = (
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "data.cache_dir",
    "data.eval_batch_size",
    "model.compile",
)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def check_resume_compatible(saved_yaml: str, current: dict[str, Any], path: str) -> None:
    """Refuse resuming with a different model, data, seed or batch layout, naming the keys that differ."""
    import yaml

    if not saved_yaml:
        return
    saved = yaml.safe_load(saved_yaml) or {}

    def pick(cfg: dict[str, Any]) -> dict[str, Any]:
        flat = _flatten({k: cfg.get(k) for k in ("model", "data", "seed")})
        trainer = cfg.get("trainer") or {}
        flat.update({f"trainer.{k}": trainer.get(k) for k in COMPARED_TRAINER_KEYS})
        return {k: v for k, v in flat.items() if k not in RESUMABLE_CHANGES and not k.endswith("._partial_")}

    before, now = pick(saved), pick(current)
    diffs = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if diffs:
        shown = ", ".join(f"{k}={before.get(k)!r} (now {now.get(k)!r})" for k in diffs[:3])
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise ZooError(
            f"ckpt_path={path} was trained with {shown}{more}: resume with the original settings "
            "(or start a new run without ckpt_path)"
        )
