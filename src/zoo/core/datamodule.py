"""The one DataModule shape every zoo family follows.

The contract (also written down in docs/datamodules.md):

``prepare_data()``
    Download, cache and preprocess to disk, once. Lightning calls it on local rank 0 only; the zoo entry
    point also calls it before the model is built (the model needs e.g. the vocabulary size). It must be
    idempotent and cheap on a warm cache: everything it writes lives under ``cache_dir`` in a folder whose
    name is a fingerprint of the settings that produced it, written atomically under a file lock, so that
    concurrent ranks (SLURM starts them all at once) never see half a cache.

``setup(stage)``
    Runs on every rank. Loads what ``prepare_data`` wrote and builds deterministic splits: the same
    settings give the same train/val/test rows on every machine and every rank. No downloads here.

``model_kwargs()``
    What the model reads from the data when Hydra instantiates it: vocabulary sizes, schemas, dataset
    parameters. The entry point calls ``instantiate(cfg.model, **dm.model_kwargs())``, so recipe configs
    never duplicate numbers that the data already knows. It may call ``prepare_data``/``setup`` itself.

Loader settings shared by every family
    ``batch_size``, ``num_workers`` (an int or ``"auto"``: the cores per device minus one, at most 8),
    ``pin_memory`` (``"auto"``: on when CUDA is available), ``persistent_workers`` (only meaningful
    with workers). Training batches come from `ResumableSampler`, a seeded shuffling sampler that shards
    by rank and whose position is saved in the checkpoint (``state_dict``), so a resume mid-epoch
    continues with the very next batch instead of replaying the epoch from its start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sized
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from zoo.core.errors import ZooError


def auto_num_workers(devices: int = 1) -> int:
    """Cores per device minus one for the main process, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // max(1, devices) - 1))


def fingerprint(settings: dict[str, Any], length: int = 12) -> str:
    """A short stable hash of JSON-able settings, used to name cache folders."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


@contextlib.contextmanager
def cache_lock(folder: Path) -> Iterator[None]:
    """Serialize writers of one cache folder across processes (ranks, concurrent runs)."""
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        yield


class ResumableSampler(Sampler[int]):
    """Seeded sampler that shards by rank and can start an epoch part-way through.

    The order of epoch ``e`` is a permutation drawn from ``seed + e`` (or ``range(n)`` unshuffled), so
    every rank computes the same order without communicating. Training (``pad=True``) pads the order to a
    multiple of the world size as DistributedSampler does, so every rank takes the same number of steps;
    evaluation (``pad=False``) leaves the shards uneven so no sample is counted twice.

    ``len()`` is always the full epoch: Lightning counts the batches it already did before a resume, and
    the iterator skips exactly those samples.

    With ``weights`` (training only), an epoch is ``n`` draws with replacement, sample ``i`` drawn with
    probability proportional to ``weights[i]``; the draws are seeded the same way, so resume stays exact.
    """

    def __init__(
        self,
        n: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        weights: torch.Tensor | None = None,
    ):
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float64)
            if weights.shape != (n,) or not torch.isfinite(weights).all() or (weights < 0).any():
                raise ZooError(f"sampler weights: expected {n} finite non-negative numbers")
            if not shuffle or weights.sum() <= 0:
                raise ZooError("sampler weights: need shuffling and at least one positive weight")
        self.weights = weights
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, samples already consumed by this rank)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, consumed: int) -> None:
        self._resume = (epoch, consumed)

    def _indices(self) -> torch.Tensor:
        if self.weights is not None:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        elif self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if self.pad and self.world_size > 1 and self.n % self.world_size:
            extra = self.world_size - self.n % self.world_size
            order = torch.cat([order, order[:extra]])
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        indices = self._indices()
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1] :]
            self._resume = None
        return iter(indices.tolist())

    def __len__(self) -> int:
        if self.pad:
            return -(-self.n // self.world_size)
        return len(range(self.rank, self.n, self.world_size))


class ZooDataModule(pl.LightningDataModule):
    """Base class of every family's DataModule; see the module docstring for the contract."""

    #: The zoo family (subpackage) this data belongs to; model/data mismatches are checked against it.
    family: ClassVar[str] = ""

    def __init__(
        self,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | str = "auto",
        pin_memory: bool | str = "auto",
        persistent_workers: bool = True,
        seed: int = 1337,
        cache_dir: str | os.PathLike[str] = "data/cache",
    ):
        super().__init__()
        if int(batch_size) <= 0:
            raise ZooError(f"data.batch_size must be a positive integer, got {batch_size}")
        if num_workers != "auto" and (not isinstance(num_workers, int) or num_workers < 0):
            raise ZooError(f"data.num_workers must be 'auto' or an integer >= 0, got {num_workers!r}")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.seed = int(seed)
        self.cache_dir = Path(cache_dir)
        self._train_sampler: ResumableSampler | None = None
        self._resume_state: dict[str, int] | None = None

    # -- the prepared cache ----------------------------------------------------------------------------
    #: Where `prepare_data` puts this data: ``cache_dir/<family>/<name>-<fingerprint>`` (None: no cache).
    folder: Path | None = None
    #: True: `build_cache` resumes what an interrupted build left in the `.tmp` folder (it must check it).
    resumable_cache: ClassVar[bool] = False

    def prepare_data(self) -> None:
        """Build `folder` once with `build_cache`, in a `.tmp` sibling renamed into place under a file
        lock: a folder with a manifest.json is complete, so later runs and other ranks just reuse it."""
        if self.folder is None or (self.folder / "manifest.json").is_file():
            return
        with cache_lock(self.folder):
            if (self.folder / "manifest.json").is_file():  # another process finished it meanwhile
                return
            tmp = self.folder.with_name(self.folder.name + ".tmp")
            if not self.resumable_cache:
                shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True, exist_ok=True)
            self.build_cache(tmp)
            shutil.rmtree(self.folder, ignore_errors=True)
            tmp.rename(self.folder)

    def build_cache(self, out: Path) -> None:
        """Write the prepared data into `out`, manifest.json included."""
        raise NotImplementedError(f"{type(self).__name__} sets a cache folder but does not build it")

    # -- what subclasses provide -------------------------------------------------------------------
    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments the family's LightningModule needs from the data."""
        return {}

    def fingerprint(self) -> str:
        """Identifies the processed data (used to refuse resuming onto different data)."""
        return ""

    # -- shared loader logic ---------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _workers(self) -> int:
        if self.num_workers != "auto":
            return int(self.num_workers)
        devices = self.trainer.num_devices if self.trainer is not None else 1
        return auto_num_workers(devices)

    def make_loader(
        self, dataset: Dataset, train: bool, collate_fn: Any = None, weights: torch.Tensor | None = None
    ) -> DataLoader:
        """A DataLoader with the shared settings and a `ResumableSampler` (shuffled when training;
        ``weights``: training samples drawn in proportion to them, with replacement)."""
        if not isinstance(dataset, Sized) or len(dataset) == 0:
            raise ZooError(
                f"{type(self).__name__}: the {'training' if train else 'evaluation'} split is empty"
            )
        rank, world = self._world()
        batch_size = self.batch_size if train else self.eval_batch_size
        if train and len(dataset) < batch_size * world:
            raise ZooError(
                f"data.batch_size={batch_size} (x{world} devices) is larger than the training set "
                f"({len(dataset)} samples): lower data.batch_size or use more data"
            )
        sampler = ResumableSampler(
            len(dataset),
            shuffle=train,
            seed=self.seed,
            rank=rank,
            world_size=world,
            pad=train,
            weights=weights if train else None,
        )
        if train:
            # Kept for every training loader built after a restore: the sampler applies it only to the
            # resumed epoch, whichever loader Lightning ends up iterating.
            if self._resume_state is not None:
                sampler.resume_at(self._resume_state["epoch"], self._resume_state["consumed"])
            self._train_sampler = sampler
        workers = self._workers()
        pin = torch.cuda.is_available() if self.pin_memory == "auto" else bool(self.pin_memory)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=bool(self.persistent_workers and workers > 0),
            collate_fn=collate_fn,
            drop_last=train,
        )

    # -- checkpointed position -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"fingerprint": self.fingerprint()}
        trainer = self.trainer
        if trainer is not None and self._train_sampler is not None:
            progress = trainer.fit_loop.epoch_loop.batch_progress.current
            state["epoch"] = trainer.current_epoch
            # Batches whose training step ran in this epoch; each took batch_size samples on this rank.
            state["consumed"] = progress.processed * self.batch_size
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved, current = state_dict.get("fingerprint", ""), self.fingerprint()
        if saved and current and saved != current:
            raise ZooError(
                f"the checkpoint was trained on different data (fingerprint {saved}, this data config gives "
                f"{current}): resume with the data settings of the original run"
            )
        if "epoch" in state_dict:
            self._resume_state = {"epoch": int(state_dict["epoch"]), "consumed": int(state_dict["consumed"])}
