"""`python -m zoo.predict ckpt_path=<ckpt | run | export> input=history.csv [k=5] [backend=onnx]`: the next
K events of every case (`EventModule.predict`).

Reads an event history (CSV / Parquet / XES) with the training run's column mapping, encodes it with the
checkpoint's vocabulary (values never seen in training become ``<unk>``; how many is printed and written
to ``predict_summary.json``), and decodes K events autoregressively (greedy, or sampled with
``sampling=sample temperature=...``). One output row per case and step: every field's predicted value
and its probability (``<field>_p``), and with a time head the predicted days to the event and its time.
A case whose predicted next activity is ``<eoc>`` (end of case) gets no further rows. ``backend=onnx``
decodes over the probabilities of an export folder's ``model.onnx`` in onnxruntime instead of the
PyTorch network: the same choices, step by step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from zoo.core.errors import ZooError
from zoo.core.run import write_json
from zoo.events.model import distributions


def check_vocab_file(model: Any, path: Path) -> None:
    from zoo.events.schema import Vocab

    try:
        vocab = Vocab.from_json(path.read_text())
    except (OSError, json.JSONDecodeError, ValueError) as err:
        raise ZooError(f"vocab={path}: not a readable vocab.json ({err})") from err
    model.check_vocab(vocab, f"vocab={path}")


def encode_history(
    model: Any, frame: pd.DataFrame, columns: dict[str, str], where: str
) -> tuple[list[str], torch.Tensor, torch.Tensor, pd.Series, dict[str, int]]:
    """(case ids, source windows [C, S, F], lengths [C], last timestamp per case, unknown counts)."""
    from zoo.events.schema import field_tokens
    from zoo.events.sources import normalize

    schema, S = model.schema, model.hparams.src_seq_len
    time_cols = tuple(dict.fromkeys(f.source for f in schema.fields if f.derive))
    df = normalize(frame, columns, [c for c in schema.raw_columns() if c != "case_id"], where, time_cols)
    ids, unknown = model.vocab.encode(field_tokens(df, schema), schema.names)
    cases = pd.unique(df["case_id"])
    codes = pd.factorize(df["case_id"])[0]
    src = torch.zeros(len(cases), S, len(schema.names), dtype=torch.long)
    lengths = torch.zeros(len(cases), dtype=torch.long)
    bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True])
    for c, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        window = ids[max(a, b - S) : b]
        src[c, : len(window)] = torch.from_numpy(window)
        lengths[c] = len(window)
    last_time = df.groupby("case_id", sort=False)["timestamp"].max()
    return [str(c) for c in cases], src, lengths, last_time, unknown


def choose(
    p: torch.Tensor, sampling: str, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """A value per row of probabilities p [C, V]: the likeliest, or one drawn from softmax(logits / T)
    (= softmax(log p / T): the logits' constant offset cancels)."""
    if sampling == "sample":
        weights = torch.softmax(torch.log(p) / max(temperature, 1e-6), -1)
        return torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return p.argmax(-1)


@torch.no_grad()
def predict_next(
    model: Any,
    src: torch.Tensor,
    lengths: torch.Tensor,
    k: int,
    sampling: str = "greedy",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    onnx: Any = None,
) -> dict[str, torch.Tensor]:
    """Autoregressive decoding: ids [C, k, F], probabilities [C, k, F], days to each event [C, k] (NaN
    without a time head). Each step feeds the chosen event back as the next decoder input. The
    probabilities come from the PyTorch network (its encoder run once), or from `onnx`, a
    `zoo.events.export.OnnxEvents` (the whole graph run every step)."""
    from zoo.events.schema import BOS

    net = model.net
    if k > net.tgt_len:
        raise ZooError(f"k={k} is more than the model's target window (data.tgt_seq_len={net.tgt_len})")
    if onnx is None:
        memory, mask = net.encode(src, lengths)

        def step(tgt_in: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
            logits, time = net.heads_out(net.decode(memory, mask, tgt_in)[:, -1])
            return distributions(logits), time
    else:

        def step(tgt_in: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
            probs, time = onnx(src, lengths, tgt_in)
            return [p[:, -1] for p in probs], (time[:, -1] if time is not None else None)

    tgt_in = torch.full((src.shape[0], 1, src.shape[2]), BOS, dtype=torch.long, device=src.device)
    ids, probs, days = [], [], []
    for _ in range(k):
        field_probs, time = step(tgt_in)
        step_ids = [choose(p, sampling, temperature, generator) for p in field_probs]
        chosen = torch.stack(step_ids, 1)
        ids.append(chosen)
        probs.append(
            torch.stack([p.gather(1, c[:, None]).squeeze(1) for p, c in zip(field_probs, step_ids)], 1)
        )
        days.append(
            torch.expm1(time.float().clamp(max=20))
            if time is not None
            else torch.full((src.shape[0],), float("nan"))
        )
        tgt_in = torch.cat([tgt_in, chosen[:, None]], 1)
    return {"ids": torch.stack(ids, 1), "probs": torch.stack(probs, 1), "days": torch.stack(days, 1)}


def run_columns(run: Any, columns: Any = None) -> dict[str, Any]:
    """The column mapping of an input: `columns` if given, else the training run's ``data.columns``."""
    data_cfg = run.config.get("data") if run.config is not None else None
    columns = columns or (data_cfg.get("columns") if data_cfg is not None else None) or {}
    return OmegaConf.to_container(columns) if OmegaConf.is_config(columns) else dict(columns)


def next_events(
    model: Any,
    frame: pd.DataFrame,
    columns: dict[str, Any],
    k: int,
    sampling: str = "greedy",
    temperature: float = 1.0,
    seed: int = 1337,
    onnx: Any = None,
    where: str = "input",
) -> tuple[pd.DataFrame, list[str], dict[str, int]]:
    """(one row per case and predicted step: every field's value and probability, with a time head the
    days to the event and its time; the case ids; counts of values never seen in training), for the
    event history `frame`. ``zoo.predict`` writes the table, ``zoo.serve`` answers it."""
    from zoo.events.schema import EOC

    cases, src, lengths, last_time, unknown = encode_history(model, frame, columns, where)
    gen = torch.Generator().manual_seed(seed)
    out = predict_next(model, src, lengths, k, sampling, temperature, gen, onnx=onnx)
    names, vocab = model.schema.names, model.vocab
    target = names.index(model.schema.target)
    rows = []
    for c, case in enumerate(cases):
        when = last_time[case]
        for step in range(k):
            row: dict[str, Any] = {"case_id": case, "step": step + 1}
            for f, name in enumerate(names):
                row[name] = vocab.decode(name, int(out["ids"][c, step, f]))
                row[f"{name}_p"] = round(float(out["probs"][c, step, f]), 6)
            ended = int(out["ids"][c, step, target]) == EOC
            if model.net.time_head is not None and not ended:
                d = float(out["days"][c, step])
                when = when + pd.Timedelta(days=d)
                row["days_to_event"] = round(d, 6)
                row["predicted_time"] = when.isoformat()
            rows.append(row)
            if ended:
                break
    return pd.DataFrame(rows), cases, unknown


def predict(model: Any, cfg: DictConfig, output_dir: Path, run: Any) -> pd.DataFrame:
    """``python -m zoo.predict`` for an event predictor: predictions.csv (or ``output=``) and
    predict_summary.json in `output_dir`. `run` is what ckpt_path= loaded (`zoo.core.family.Run`)."""
    from zoo.events.sources import read_table

    if cfg.sampling not in ("greedy", "sample"):
        raise ZooError(f"sampling={cfg.sampling}: expected greedy or sample")
    k = cfg.get("k")
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ZooError(f"k={k} must be a positive integer")
    if not cfg.get("input"):
        raise ZooError(
            "input= is required: an event history (.csv, .parquet or .xes) with the training run's columns"
        )
    backend = str(cfg.get("backend", "torch"))
    onnx = None
    if backend == "onnx":
        from zoo.core.onnx import export_onnx_file
        from zoo.events.export import ONNX_FILE, OnnxEvents

        onnx = OnnxEvents(export_onnx_file(run, ONNX_FILE), model.schema.names)
    # The vocab.json written beside the checkpoints (or in the export folder) unless vocab= names another.
    beside = run.path if run.kind == "export" else Path(run.path).parent
    vocab_file = Path(cfg.vocab) if cfg.get("vocab") else beside / "vocab.json"
    if cfg.get("vocab") and not vocab_file.is_file():
        raise ZooError(f"vocab={vocab_file}: no such file")
    if vocab_file.is_file():
        check_vocab_file(model, vocab_file)
    columns = run_columns(run, cfg.get("columns"))
    frame = read_table(cfg.input, key="input")
    result, cases, unknown = next_events(
        model,
        frame,
        columns,
        k,
        cfg.sampling,
        float(cfg.temperature),
        int(cfg.get("seed", 1337)),
        onnx,
        f"input={cfg.input}",
    )
    output = Path(cfg.output) if cfg.get("output") else Path(output_dir) / "predictions.csv"
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".parquet":
        result.to_parquet(output, index=False)
    else:
        result.to_csv(output, index=False)
    summary = {"cases": len(cases), "rows": len(result), "k": k, "sampling": cfg.sampling, "backend": backend,
               "unknown_values": {n: v for n, v in unknown.items() if v}, "output": str(output)}  # fmt: skip
    write_json(Path(output_dir) / "predict_summary.json", summary)
    print(f"[zoo] predicted {len(result)} events for {len(cases)} cases ({backend}) -> {output}")
    n_unknown = sum(unknown.values())
    if n_unknown:
        detail = ", ".join(f"{k}: {v}" for k, v in unknown.items() if v)
        print(f"[zoo] {n_unknown} input values never seen in training were read as <unk> ({detail})")
    else:
        print("[zoo] unknown input values: 0")
    return result
