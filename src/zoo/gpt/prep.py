"""Tokenizing pieces of a corpus for the streaming prep (`TextDataModule.prepare_data`), here or in
worker processes, results always in reading order.

The workers are fresh interpreters (``python -m zoo.gpt.prep``) that import only this module, numpy and
the tokenizer: forked from the training process they would share its torch pages copy-on-write, and the
kernel's huge-page collapsing turned ~100 MB of those shared pages private in every process midway
through a 1 GB prep (docs/gpt.md, "Preparation"). Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from zoo.gpt import sources
from zoo.gpt.tokenizer import Tokenizer, encode_arrays, tokenizer_from_json

SPLITS = ("train", "val")


def assign_splits(piece: sources.Piece, split_seed: int, val_fraction: float) -> list[tuple[str, bytes, int]]:
    """(text, its UTF-8 bytes, split) of each document of a piece that is kept (0 train, 1 val).

    The split of a document is a keyed BLAKE2b hash of its id (or of its text) below `val_fraction`: it
    depends on nothing but the document and the seed, so adding files leaves every other document where
    it was, and exact duplicates never straddle the split.
    """
    key = int(split_seed).to_bytes(8, "little", signed=True)
    threshold = int(val_fraction * 2**64)
    out = []
    for j, text in enumerate(piece.texts):
        if text is None:
            continue
        if piece.clean:
            text = text.strip()
            if not text:
                continue
        data = text.encode("utf-8")
        if piece.splits is not None:
            split = piece.splits[j]
        else:
            ident = piece.ids[j] if piece.ids is not None else None
            digest = hashlib.blake2b(data if ident is None else ident.encode(), digest_size=8, key=key)
            split = int(int.from_bytes(digest.digest(), "little") < threshold)
        out.append((text, data, split))
    return out


def encode_piece(
    piece: sources.Piece,
    tok: Tokenizer,
    eot: int | None,
    dtype: str,
    split_seed: int,
    val_fraction: float,
) -> dict[str, Any]:
    """Tokens of a piece per split (documents in order, each followed by `eot`), and per document its
    token count (with the separator), split, characters and bytes (the main process cuts at budgets)."""
    docs = assign_splits(piece, split_seed, val_fraction)
    arrays = encode_arrays(tok, [d[0] for d in docs], dtype)
    split = np.fromiter((d[2] for d in docs), dtype=np.uint8, count=len(docs))
    sep = [] if eot is None else [np.asarray([eot], dtype=dtype)]
    tokens = []
    for s in range(len(SPLITS)):
        parts = [p for a, k in zip(arrays, split, strict=True) if k == s for p in (a, *sep)]
        tokens.append(np.concatenate(parts) if parts else np.zeros(0, dtype=dtype))
    return {
        "tokens": tokens,
        "lengths": np.fromiter((len(a) + len(sep) for a in arrays), dtype=np.int64, count=len(arrays)),
        "split": split,
        "chars": np.fromiter((len(d[0]) for d in docs), dtype=np.int64, count=len(docs)),
        "bytes": np.fromiter((len(d[1]) for d in docs), dtype=np.int64, count=len(docs)),
    }


@contextlib.contextmanager
def _single_threaded_tokenizers() -> Iterator[None]:
    """HF tokenizers otherwise spreads `encode_batch` over every core: a worker must stay on one."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


Encoder = Callable[[Iterator[sources.Piece]], Iterator[tuple[tuple, dict[str, Any]]]]


PIPE_BYTES = 1 << 20  # ~2.5 MB of pickled texts per piece (1024 web documents): a few writes, not forty


def _widen(fd: int) -> None:
    with contextlib.suppress(Exception):  # Linux only; elsewhere the default 64 KB pipe still works
        import fcntl

        fcntl.fcntl(fd, 1031, PIPE_BYTES)  # F_SETPIPE_SZ


class _Worker:
    """One ``python -m zoo.gpt.prep`` process. A feeder thread pickles pieces into its input pipe and a
    reader thread unpickles results from its output pipe as soon as they come: the worker never waits
    for the main process to get round to it (results are taken in reading order, which may mean the
    other worker's first), and the main thread never blocks on a full pipe."""

    def __init__(self, init: tuple):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        for fd in (to_child_w, from_child_w):
            _widen(fd)
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        cmd = [sys.executable, "-m", "zoo.gpt.prep", str(to_child_r), str(from_child_w), str(os.getpid())]
        self.proc = subprocess.Popen(
            cmd, pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.send = os.fdopen(to_child_w, "wb", buffering=0)
        self.recv = os.fdopen(from_child_r, "rb")
        self.inbox: queue.Queue = queue.Queue()
        self.outbox: queue.Queue = queue.Queue()
        self.threads = [
            threading.Thread(target=self._feed, daemon=True),
            threading.Thread(target=self._read, daemon=True),
        ]
        for t in self.threads:
            t.start()
        self.inbox.put(init)

    def _feed(self) -> None:
        try:
            while (item := self.inbox.get()) is not None:
                data = memoryview(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
                while data:  # one unbuffered write per pipe-full, the GIL released while it blocks
                    data = data[self.send.write(data) :]
        except OSError:  # the worker died: the reader reports it
            pass
        finally:
            with contextlib.suppress(OSError):
                self.send.close()

    def _read(self) -> None:
        while True:
            try:
                self.outbox.put(pickle.load(self.recv))
            except Exception:  # EOF or a broken pipe: the worker is gone
                self.outbox.put(None)
                return

    def result(self) -> dict[str, Any]:
        reply = self.outbox.get()
        if reply is None:
            code = self.proc.wait()
            raise RuntimeError(f"data prep worker {self.proc.pid} exited ({code}) without a result")
        status, value = reply
        if status != "ok":
            raise RuntimeError(f"data prep worker {self.proc.pid} failed:\n{value}")
        return value

    def close(self, kill: bool = False) -> None:
        self.inbox.put(None)
        if kill:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self.threads:
            t.join(timeout=10)
        with contextlib.suppress(OSError):
            self.recv.close()


@contextlib.contextmanager
def ordered_encoder(
    workers: int, tok: Tokenizer, eot: int | None, dtype: str, split_seed: int, val_fraction: float
) -> Iterator[Encoder]:
    """A function mapping pieces to ``(key, encode_piece(...))`` in reading order.

    With one worker it runs here; with more, piece i goes to worker i mod n, at most two pieces per
    worker in flight (memory stays flat whatever the corpus size), and results are taken back in the
    same order: the shards do not depend on the number of workers or on timing.
    """
    args = (eot, dtype, split_seed, val_fraction)
    if workers <= 1:

        def run_here(pieces: Iterator[sources.Piece]) -> Iterator[tuple[tuple, dict[str, Any]]]:
            for piece in pieces:
                yield piece.key, encode_piece(piece, tok, *args)

        with _single_threaded_tokenizers():
            yield run_here
        return
    pool = [_Worker((tok.to_json(), *args)) for _ in range(workers)]
    clean = False
    try:

        def run_pool(pieces: Iterator[sources.Piece]) -> Iterator[tuple[tuple, dict[str, Any]]]:
            pending: deque = deque()
            for i, piece in enumerate(pieces):
                worker = pool[i % workers]
                worker.inbox.put(piece)
                pending.append((piece.key, worker))
                del piece
                if len(pending) >= 2 * workers:
                    key, worker = pending.popleft()
                    yield key, worker.result()
            while pending:
                key, worker = pending.popleft()
                yield key, worker.result()

        yield run_pool
        clean = True
    finally:
        for worker in pool:
            worker.close(kill=not clean)


def _serve(read_fd: int, write_fd: int, parent: int) -> None:
    """A worker's loop: the settings first, then one result per piece until the input pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    with contextlib.suppress(Exception):  # Linux: die with the main process, even on its SIGKILL
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above
        return
    recv, send = os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb", buffering=0)
    tokenizer_json, *args = pickle.load(recv)
    tok = tokenizer_from_json(tokenizer_json)
    while True:
        try:
            piece = pickle.load(recv)
        except EOFError:
            return
        try:
            reply = ("ok", encode_piece(piece, tok, *args))
        except Exception:
            reply = ("error", traceback.format_exc())
        data = memoryview(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        while data:
            data = data[send.write(data) :]


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
