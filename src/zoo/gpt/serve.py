"""GPT over HTTP: OpenAI's ``POST /v1/completions`` (`ZooModule.serve_api` of the GPT family).

Requests are checked in the HTTP process (`CompletionsSpec`: fields and types, empty prompt, prompt longer
than the context, ``max_tokens`` above the cap) and decoded in the inference worker by continuous
batching (LitServe's `ContinuousBatchingLoop`): every sequence in flight advances one token per step, in
one forward pass over a shared KV cache; a new request is prefilled and joins the running batch at the next
step, a finished one leaves it. Rows of different lengths sit left-padded in the cache with an attention
mask and their own positions (`zoo.gpt.model.GPT.forward`'s `start`/`mask`); a request decoded alone takes
exactly `GPT.generate`'s path, so ``temperature=0`` returns the tokens ``zoo.predict`` returns.
``backend=onnx`` decodes with ``model.onnx`` of an export folder (no KV cache: the window is recomputed
every step, as ``zoo.predict backend=onnx`` does), one row per step.

Sampling per request: ``temperature`` (0: greedy), ``top_k``, ``top_p``, ``seed`` (the same seed and
settings give the same text as ``zoo.predict seed=...``), ``stop`` strings and the end-of-text token.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from litserve.loops.continuous_batching_loop import ContinuousBatchingLoop, Output
from litserve.utils import LitAPIStatus
from pydantic import BaseModel, ConfigDict, Field

from zoo.core.serving import (
    RequestError,
    ZooAPI,
    ZooSpec,
    error_response,
    model_info,
    parse_json,
    read_body,
    validate,
)
from zoo.gpt.model import pick_next


class CompletionRequest(BaseModel):
    """The body of ``POST /v1/completions`` (OpenAI's fields; ``top_k`` is the zoo's addition)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    """Informational: the server serves one model."""
    prompt: str | list[str]
    """One prompt, or a list of prompts (each gets `n` choices)."""
    max_tokens: int = Field(16, ge=1)
    """Tokens to generate at most per choice (OpenAI's default: 16)."""
    temperature: float = Field(1.0, ge=0.0)
    """0: greedy; otherwise logits / temperature are sampled."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling: the smallest set of tokens whose probability reaches top_p."""
    top_k: int | None = Field(None, ge=0)
    """Sample among the k likeliest tokens (null or 0: all)."""
    n: int = Field(1, ge=1)
    """Choices per prompt."""
    stop: str | list[str] | None = None
    """Up to 4 strings; generation stops before the first one (not returned)."""
    seed: int | None = None
    """Seed of the sampler (null: a random one)."""
    stream: bool = False
    """Server-sent events: one chunk per new piece of text, then ``data: [DONE]``."""
    stream_options: dict[str, bool] | None = None
    """``{"include_usage": true}``: a last chunk with the usage."""
    user: str | None = None
    """Ignored (OpenAI's end-user id)."""


def _stop_strings(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4:
        raise RequestError(f"field 'stop': at most 4 stop strings (got {len(stops)})", "stop")
    if any(s == "" for s in stops):
        raise RequestError("field 'stop': a stop string cannot be empty", "stop")
    return stops


class CompletionsSpec(ZooSpec):
    """``POST /v1/completions`` in the HTTP process: checks, tokenizes, queues one sequence per prompt and
    choice, and answers in OpenAI's shape (JSON, or server-sent events with ``stream``)."""

    path = "/v1/completions"

    def __init__(self, limits: dict[str, Any], info: dict[str, Any], tokenizer_json: str, block_size: int):
        super().__init__(limits, info)
        self.tokenizer_json, self.block_size = tokenizer_json, int(block_size)
        self._tok: Any = None

    @property
    def stream(self) -> bool:
        return True  # the worker streams tokens; a non-streaming request is gathered here

    @property
    def tokenizer(self) -> Any:
        if self._tok is None:
            from zoo.gpt.tokenizer import tokenizer_from_json

            self._tok = tokenizer_from_json(self.tokenizer_json)
        return self._tok

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_tok"] = None
        return state

    def parse(self, body: bytes, content_type: str) -> tuple[CompletionRequest, list[dict[str, Any]]]:
        req = validate(CompletionRequest, parse_json(body))
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise RequestError("field 'prompt': the list of prompts is empty", "prompt")
        cap, most = int(self.limits["max_tokens_cap"]), int(self.limits["max_prompts"])
        if len(prompts) * req.n > most:
            raise RequestError(
                f"field 'prompt': {len(prompts)} prompts x n={req.n} is more than max_prompts={most}",
                "prompt",
            )
        if req.max_tokens > cap:
            raise RequestError(
                f"field 'max_tokens': {req.max_tokens} is above this server's cap of {cap}", "max_tokens"
            )
        stops = _stop_strings(req.stop)
        sequences = []
        for p, prompt in enumerate(prompts):
            where = "prompt" if isinstance(req.prompt, str) else f"prompt.{p}"
            if not prompt:
                raise RequestError(f"field '{where}': the prompt is empty", "prompt")
            try:
                ids = self.tokenizer.encode(prompt)
            except Exception as err:  # a character the tokenizer does not know (ZooError) and the like
                raise RequestError(f"field '{where}': {err}", "prompt") from None
            if len(ids) >= self.block_size:
                raise RequestError(
                    f"field '{where}': {len(ids)} tokens, longer than the model's context of {self.block_size}",
                    "prompt",
                )
            if len(ids) + req.max_tokens > self.block_size:
                raise RequestError(
                    f"field 'max_tokens': the prompt's {len(ids)} tokens + max_tokens={req.max_tokens} exceed the "
                    f"model's context of {self.block_size} (ask for at most {self.block_size - len(ids)})",
                    "max_tokens",
                )
            for c in range(req.n):
                seed = req.seed + c if req.seed is not None else random.randrange(2**62)
                sequences.append({"ids": ids, "max_tokens": req.max_tokens, "temperature": req.temperature,
                                  "top_k": req.top_k or None, "top_p": req.top_p, "stop": stops, "seed": seed,
                                  "stream": req.stream})  # fmt: skip
        return req, sequences

    async def _merged(self, streams: list[Any]) -> Any:
        """(choice index, message) from every sequence's stream as they come, then (index, None) at its end."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, stream: Any) -> None:
            try:
                async for data, status in stream:
                    await queue.put((i, data, status))
            finally:
                await queue.put((i, None, None))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
        left = len(tasks)
        while left:
            i, data, status = await queue.get()
            if data is None and status is None:
                left -= 1
                continue
            if status == LitAPIStatus.ERROR:
                for t in tasks:
                    t.cancel()
                raise RequestError("the model failed on this request (see the server log)", None, 500)
            yield i, json.loads(data)

    async def handle(self, request: Request) -> Any:
        try:
            body = await read_body(request, self.max_body_bytes)
            req, sequences = self.parse(body, request.headers.get("content-type", ""))
        except RequestError as err:
            return error_response(err)
        uids, streams = [], []
        for seq in sequences:
            uid, item = self.submit(seq, stream=True)
            uids.append(uid)
            streams.append(self.data_streamer(item.response_queue, item.event, send_status=True))
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.info["id"]}  # fmt: skip
        prompt_tokens = sum(len(s["ids"]) for s in sequences)

        def usage(completion: int) -> dict[str, int]:
            return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion}  # fmt: skip

        def forget() -> None:
            for uid in uids:
                self.response_buffer.pop(uid, None)

        if req.stream:

            async def events() -> Any:
                completion = 0
                try:
                    async for i, msg in self._merged(streams):
                        completion += msg["new_tokens"]
                        if msg["text"] or msg["finish_reason"]:
                            choice = {"text": msg["text"], "index": i, "logprobs": None,
                                      "finish_reason": msg["finish_reason"]}  # fmt: skip
                            yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"
                    if (req.stream_options or {}).get("include_usage"):
                        yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage(completion)})}\n\n"
                    yield "data: [DONE]\n\n"
                except RequestError as err:
                    yield f"data: {json.dumps({'error': {'message': str(err), 'code': err.status}})}\n\n"
                finally:
                    forget()

            return StreamingResponse(events(), media_type="text/event-stream")
        texts = [""] * len(sequences)
        reasons: list[str | None] = [None] * len(sequences)
        completion = 0
        try:
            async for i, msg in self._merged(streams):
                texts[i] += msg["text"]
                completion += msg["new_tokens"]
                reasons[i] = msg["finish_reason"] or reasons[i]
        except RequestError as err:
            return error_response(err)
        finally:
            forget()
        choices = [{"text": t, "index": i, "logprobs": None, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, reasons))]  # fmt: skip
        return JSONResponse({**head, "choices": choices, "usage": usage(completion)})


@dataclass
class Row:
    """One sequence being decoded."""

    uid: str
    prompt: list[int]
    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float
    stop: list[str]
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the decoded text already sent
    counted: int = 0  # tokens already reported in a message (usage)
    stream: bool = True  # False: one message when the row finishes (no per-token traffic to the HTTP process)
    finish: str | None = None


def sample(logits: torch.Tensor, row: Row) -> int:
    """The next token of `row` from its last-position logits (vocab,): `pick_next` (what zoo.predict
    draws with the same seed), with top_p's nucleus filter when it is below 1."""
    if row.temperature <= 0 or row.top_p >= 1.0:
        return int(pick_next(logits[None], row.temperature, row.top_k, row.generator)[0, 0])
    scaled = logits.float() / row.temperature
    if row.top_k:
        kth = torch.topk(scaled, min(row.top_k, scaled.numel())).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = F.softmax(scaled, dim=-1)
    ordered, order = probs.sort(descending=True)
    # Keep the smallest prefix whose mass reaches top_p (the token that crosses it included).
    drop = ordered.cumsum(0) - ordered >= row.top_p
    probs = probs.scatter(0, order[drop], 0.0)
    return int(torch.multinomial(probs, 1, generator=row.generator))


class DecodeBatch:
    """The sequences in flight and their shared KV cache, left-padded: row b's first `pad[b]` cache slots
    are empty and masked; every row's newest token is in the last slot."""

    def __init__(self, net: Any):
        self.net = net
        self.rows: list[Row] = []
        self.caches: list[dict[str, torch.Tensor]] = []
        self.pad = torch.zeros(0, dtype=torch.long)
        self.width = 0  # cache slots

    def _forward(self, idx: torch.Tensor, caches: list[dict], pad: torch.Tensor, width: int) -> torch.Tensor:
        """Last-position logits of idx (B, T) appended to `caches` of `width` slots (left pads `pad`)."""
        B, T = idx.shape
        if not bool(pad.any()):  # no padding: GPT.generate's own path (causal prefill, unmasked steps)
            return self.net(idx, caches, start=width)[:, -1, :]
        slots = torch.arange(width + T)
        keep = slots[None, :] >= pad[:, None]  # (B, S): not a pad slot
        query = torch.arange(width, width + T)
        causal = slots[None, :] <= query[:, None]  # (T, S)
        mask = (keep[:, None, :] & causal[None]) | (slots[None, None, :] == query[None, :, None])
        # A pad slot attends to itself only: its output is never read, but it must stay finite.
        start = width - pad
        return self.net(idx, caches, start=start, mask=mask[:, None])[:, -1, :]

    def step(self) -> torch.Tensor:
        """Advance every row by its last token: logits (B, vocab)."""
        last = torch.tensor([[r.tokens[-1]] for r in self.rows], dtype=torch.long)
        logits = self._forward(last, self.caches, self.pad, self.width)
        self.width += 1
        return logits

    def admit(self, rows: list[Row]) -> torch.Tensor:
        """Prefill new rows (left-padded to their longest prompt) and add them: their logits (B', vocab)."""
        longest = max(len(r.prompt) for r in rows)
        pad = torch.tensor([longest - len(r.prompt) for r in rows], dtype=torch.long)
        idx = torch.zeros(len(rows), longest, dtype=torch.long)
        for b, r in enumerate(rows):
            idx[b, longest - len(r.prompt) :] = torch.tensor(r.prompt, dtype=torch.long)
        caches: list[dict[str, torch.Tensor]] = [{} for _ in self.net.blocks]
        logits = self._forward(idx, caches, pad, 0)
        if not self.rows:
            self.rows, self.caches, self.pad, self.width = list(rows), caches, pad, longest
            return logits
        width = max(self.width, longest)
        for old, new in zip(self.caches, caches):
            for key in ("k", "v"):
                old[key] = torch.cat(
                    [
                        F.pad(old[key], (0, 0, width - self.width, 0)),
                        F.pad(new[key], (0, 0, width - longest, 0)),
                    ]
                )
        self.pad = torch.cat([self.pad + width - self.width, pad + width - longest])
        self.rows += rows
        self.width = width
        return logits

    def keep(self, alive: list[int]) -> None:
        """Drop the other rows, and the cache slots every remaining row has as padding."""
        if len(alive) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in alive]
        if not self.rows:
            self.caches, self.pad, self.width = [], torch.zeros(0, dtype=torch.long), 0
            return
        index = torch.tensor(alive, dtype=torch.long)
        self.pad = self.pad[index]
        cut = int(self.pad.min())
        for cache in self.caches:
            for key in ("k", "v"):
                cache[key] = cache[key][index, :, cut:]
        self.pad -= cut
        self.width -= cut


class WindowBatch:
    """``backend=onnx``: rows decoded one at a time over the last block_size tokens, recomputed each step
    (an exported graph has no cache), with the same sampling."""

    def __init__(self, logits_of: Any, block_size: int):
        self.logits_of, self.block = logits_of, block_size
        self.rows: list[Row] = []

    def _logits(self, row: Row) -> torch.Tensor:
        ids = torch.tensor([(row.prompt + row.tokens)[-self.block :]], dtype=torch.long)
        return self.logits_of(ids)[:, -1, :]

    def step(self) -> torch.Tensor:
        return torch.cat([self._logits(r) for r in self.rows])

    def admit(self, rows: list[Row]) -> torch.Tensor:
        self.rows += rows
        return torch.cat([self._logits(r) for r in rows])

    def keep(self, alive: list[int]) -> None:
        self.rows = [self.rows[i] for i in alive]


class GPTLoop(ContinuousBatchingLoop):
    """LitServe's continuous batching loop, sleeping while no sequence is in flight (its own loop polls
    without pause, a core's worth of CPU on an idle server)."""

    def __init__(self) -> None:
        super().__init__()
        self._wake: asyncio.Event | None = None

    def add_request(self, uid: str, request: Any, lit_api: Any, lit_spec: Any, transport: Any = None) -> None:
        lit_api.add_request(uid, request)
        self.active_sequences[uid] = {"input": None}
        if self._wake is not None:
            self._wake.set()

    async def run(self, lit_api: Any, *args: Any) -> None:
        if not lit_api.has_active_requests():
            if self._wake is None:
                self._wake = asyncio.Event()
            self._wake.clear()
            if not lit_api.has_active_requests():
                try:
                    await asyncio.wait_for(self._wake.wait(), 0.5)
                except TimeoutError:
                    pass
            return
        await super().run(lit_api, *args)


class GPTServeAPI(ZooAPI):
    """The inference worker: one `DecodeBatch` advanced a token per `step`."""

    def load(self, run: Any) -> None:
        from zoo.gpt.tokenizer import tokenizer_from_json

        module = run.module
        self.tok = tokenizer_from_json(module.tokenizer_json)
        self.net = getattr(module.net, "_orig_mod", module.net).eval()
        if self.settings.get("backend") == "onnx":
            from zoo.gpt.predict import onnx_logits

            self.batch_state: Any = WindowBatch(onnx_logits(run), self.net.cfg.block_size)
        else:
            self.batch_state = DecodeBatch(self.net)
        self.pending: list[Row] = []
        self.lock = threading.Lock()

    def add_request(self, uid: str, request: dict[str, Any]) -> None:
        row = Row(uid, list(request["ids"]), int(request["max_tokens"]), float(request["temperature"]),
                  request["top_k"], float(request["top_p"]), list(request["stop"]),
                  torch.Generator().manual_seed(int(request["seed"])), stream=bool(request["stream"]))  # fmt: skip
        with self.lock:
            self.pending.append(row)

    def has_capacity(self) -> bool:
        with self.lock:
            return len(self.batch_state.rows) + len(self.pending) < self.max_batch_size

    def has_active_requests(self) -> bool:
        with self.lock:
            return bool(self.batch_state.rows or self.pending)

    def _advance(self, row: Row, token: int) -> dict[str, Any] | None:
        """Take `token` into `row`: the message for its client (new text, finish reason), or None when
        there is nothing to send yet."""
        eot = self.tok.eot_id
        if eot is not None and token == eot:
            row.finish = "stop"
        else:
            row.tokens.append(token)
        text = self.tok.decode(row.tokens)
        cut = min((text.find(s) for s in row.stop if s in text), default=-1)
        if cut >= 0:
            text, row.finish = text[:cut], "stop"
        elif row.finish is None and len(row.tokens) >= row.max_tokens:
            row.finish = "length"
        if row.finish is None and not row.stream:
            return None
        safe = len(text)
        if row.finish is None:
            # Hold back an unfinished character and what may be the start of a stop string.
            if text.endswith("\ufffd"):
                safe = len(text.rstrip("\ufffd"))
            for s in row.stop:
                for n in range(min(len(s) - 1, safe), 0, -1):
                    if text[:safe].endswith(s[:n]):
                        safe -= n
                        break
        new = text[row.sent : max(safe, row.sent)]
        row.sent = max(safe, row.sent)
        if not new and row.finish is None:
            return None
        return {"text": new, "finish_reason": row.finish, "new_tokens": 0}

    @torch.no_grad()
    def step(self, prev_outputs: Any) -> list[Output]:
        batch = self.batch_state
        with self.lock:
            new, self.pending = self.pending, []
        rows, parts = [], []
        if batch.rows:
            rows += batch.rows
            parts.append(batch.step())
        if new:
            rows += new
            parts.append(batch.admit(new))
        if not rows:
            return []
        logits = torch.cat(parts)
        outputs, alive = [], []
        for b, row in enumerate(rows):
            msg = self._advance(row, sample(logits[b], row))
            if msg is not None:
                msg["new_tokens"], row.counted = len(row.tokens) - row.counted, len(row.tokens)
                outputs.append(Output(row.uid, msg, LitAPIStatus.OK))
            if row.finish is not None:
                outputs.append(Output(row.uid, "", LitAPIStatus.FINISH_STREAMING))
            else:
                alive.append(b)
        batch.keep(alive)
        return outputs

    def predict(self, x: Any, **kwargs: Any) -> Any:  # the loop calls step(); LitServe checks it exists
        raise NotImplementedError


def serve_api(module: Any, settings: dict[str, Any], run: Any) -> GPTServeAPI:
    from zoo.core.errors import ZooError

    if not module.tokenizer_json:
        raise ZooError(f"ckpt_path={run.path}: no tokenizer stored with the weights")
    net = getattr(module.net, "_orig_mod", module.net)
    spec = CompletionsSpec(settings, model_info(run, settings), module.tokenizer_json, net.cfg.block_size)
    return GPTServeAPI(settings["ckpt_path"], settings, spec, stream=True, loop=GPTLoop(), batch_timeout=0.0)
