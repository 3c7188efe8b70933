"""Where GPT training text comes from: local files, the HF hub, a URL, the Python standard library's own
sources (offline default), or a generated Markov corpus with a known entropy rate (for tests).

Every source returns a list of documents (strings); documents are later joined by the end-of-text token.
"""

from __future__ import annotations

import math
import sysconfig
import urllib.request
from pathlib import Path

import numpy as np

from zoo.core.errors import ZooError

TABLE_SUFFIXES = {".csv", ".parquet", ".jsonl", ".json"}


def stdlib_documents(max_bytes: int) -> list[str]:
    """The standard library's .py files (tests excluded), sorted by path, until `max_bytes` of text.

    Exists on every machine that runs Python, needs no download, and is real code.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in ("test", "tests", "idle_test", "site-packages", "lib2to3") for p in rel):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        docs.append(text)
        total += len(text.encode("utf-8"))
        if total >= max_bytes:
            break
    if not docs:
        raise ZooError(f"no Python sources found under {root} for data.source=stdlib")
    return docs


def read_documents(path: str | Path, column: str | None) -> list[str]:
    """A .txt file is one document; .csv/.parquet/.jsonl/.json give one document per row of `column`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ZooError(f"data.path={path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise ZooError(f"data.path={path}: the file is empty (no text to train on)")
        return [text]
    import pandas as pd

    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=suffix == ".jsonl")
    except Exception as err:
        raise ZooError(
            f"data.path={path}: cannot read as {suffix[1:]} ({type(err).__name__}: {err})"
        ) from err
    return documents_from_frame(frame, column, f"data.path={path}")


def documents_from_frame(frame, column: str | None, where: str) -> list[str]:
    if column is None:
        raise ZooError(
            f"{where}: set data.column to the text column (columns: {', '.join(map(str, frame.columns))})"
        )
    if column not in frame.columns:
        raise ZooError(
            f"{where}: no column {column!r} (data.column): expected one of {', '.join(map(str, frame.columns))}"
        )
    texts = frame[column].dropna().astype(str).str.strip()
    docs = [t for t in texts if t]
    if not docs:
        raise ZooError(
            f"{where}: column {column!r} (data.column) has no non-empty text: expected text to train on"
        )
    return docs


def download(url: str, cache_dir: Path) -> Path:
    """Fetch `url` once into `cache_dir/downloads` (atomic rename) and return the local path."""
    target = cache_dir / "downloads" / url.rstrip("/").rsplit("/", 1)[-1]
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    try:
        urllib.request.urlretrieve(url, tmp)
    except OSError as err:
        raise ZooError(
            f"data.url={url}: download failed ({err}); pass a local copy with data.path=..."
        ) from err
    tmp.replace(target)
    return target


def hf_documents(repo: str, column: str, cache_dir: Path, revision: str | None = None) -> list[str]:
    """All rows of a HF hub dataset's data files (parquet/csv/jsonl), in file order, cached locally."""
    import pandas as pd

    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id=repo,
            repo_type="dataset",
            revision=revision,
            cache_dir=str(cache_dir / "hf"),
            allow_patterns=["*.parquet", "*.csv", "*.jsonl"],
        )
    except Exception as err:
        raise ZooError(
            f"data.hf_repo={repo}: could not download from the HF hub ({type(err).__name__}); "
            "offline, pass a local CSV/Parquet of the same rows with data.path=..."
        ) from err
    files = sorted(p for p in Path(local).rglob("*") if p.suffix in (".parquet", ".csv", ".jsonl"))
    if not files:
        raise ZooError(f"data.hf_repo={repo}: the dataset has no parquet/csv/jsonl files")
    readers = {
        ".parquet": pd.read_parquet,
        ".csv": pd.read_csv,
        ".jsonl": lambda p: pd.read_json(p, lines=True),
    }
    frame = pd.concat([readers[f.suffix](f) for f in files], ignore_index=True)
    return documents_from_frame(frame, column, f"hf:{repo}")


def markov_corpus(
    n_tokens: int, alphabet: str, order: int, concentration: float, seed: int
) -> tuple[str, np.ndarray]:
    """A text drawn from a random order-`order` Markov chain over `alphabet`.

    Each context's next-symbol distribution is Dirichlet(`concentration`): small values make it peaked,
    so the chain has structure to learn. Returns the text and, for each position t >= order, the true
    -log p(x_t | previous `order` symbols): its mean over a span is the lowest loss any model can expect
    there (the entropy floor), which tests compare a trained model against.
    """
    if order < 1 or len(alphabet) < 2 or n_tokens <= order:
        raise ZooError("data.synthetic needs order >= 1, an alphabet of >= 2 symbols and n_tokens > order")
    rng = np.random.default_rng(seed)
    k = len(alphabet)
    probs = rng.dirichlet(np.full(k, concentration), size=k**order)  # (contexts, k)
    cdf = np.cumsum(probs, axis=1)
    seq = np.empty(n_tokens, dtype=np.int64)
    seq[:order] = rng.integers(0, k, size=order)
    uniforms = rng.random(n_tokens)
    nll = np.zeros(n_tokens)
    ctx = 0
    for t in range(order):
        ctx = ctx * k + seq[t]
    mod = k ** (order - 1)
    for t in range(order, n_tokens):
        sym = min(int(np.searchsorted(cdf[ctx], uniforms[t], side="right")), k - 1)
        seq[t] = sym
        nll[t] = -math.log(max(probs[ctx, sym], 1e-300))
        ctx = (ctx % mod) * k + sym
    text = "".join(alphabet[i] for i in seq)
    return text, nll
