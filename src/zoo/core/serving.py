"""What every family's HTTP API shares (``python -m zoo.serve``), on LitServe; the core knows no family.

A family's `ZooModule.serve_api` returns a `ZooAPI`: LitServe's `LitAPI` run in an inference worker
process (it loads the run itself with `zoo.core.family.load_run`, so the safe loading applies), with a
`ZooSpec` attached: the LitServe spec that owns the family's routes in the HTTP server process. The spec
reads and checks each request there (body size, JSON/CSV, unknown or mistyped fields, model limits) and
answers a bad one with a one-line 4xx JSON error before it reaches the worker, so a bad request never
shares a batch with good ones. Errors only the model can see (a series too short, say) come back from the
worker as one result of the batch, not as an exception that would fail the whole batch.

Errors have OpenAI's shape, one line: ``{"error": {"message": ..., "type": ..., "param": <field>,
"code": <status>}}``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import Request
from fastapi.responses import JSONResponse
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem
from pydantic import BaseModel, ValidationError

from zoo.core.errors import ZooError

ERROR_KEY = "__zoo_error__"  # a worker result that is an error for its request only


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, a one-line `message` naming `param` (the field)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(" ".join(str(message).split()))
        self.param, self.status = param, status


def error_body(message: str, param: str | None = None, status: int = 400) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {
        "error": {"message": " ".join(str(message).split()), "type": kind, "param": param, "code": status}
    }


def error_response(err: RequestError) -> JSONResponse:
    return JSONResponse(error_body(str(err), err.param, err.status), status_code=err.status)


def worker_error(err: Exception, param: str | None = None) -> dict[str, Any]:
    """The result a worker returns for one request of a batch that the model refused (`ZooError`)."""
    return {ERROR_KEY: str(err), "param": param}


def validate(model: type[BaseModel], data: Any, strict: bool = True) -> Any:
    """`data` (parsed JSON) as the pydantic `model` (extra fields forbidden; `strict`: no "3" for 3, as
    JSON has types; query-string values are all text), or a `RequestError` naming the first offending
    field."""
    if not isinstance(data, dict):
        raise RequestError(f"body: expected a JSON object, got {type(data).__name__}", "body")
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields)
            raise RequestError(f"unknown field '{field}' (expected: {known})", field) from None
        if first["type"] == "missing":
            raise RequestError(f"field '{field}' is required", field) from None
        got = type(first.get("input")).__name__
        raise RequestError(f"field '{field}': {first['msg']} (got {got})", field) from None


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(f"body: not valid JSON ({err})", "body") from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 past `max_bytes` (by its Content-Length or while reading)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(f"body: {declared} bytes is more than max_body_bytes={max_bytes}", "body", 413)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise RequestError(f"body: more than max_body_bytes={max_bytes} bytes", "body", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def model_info(run: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """``GET /v1/models``'s entry for the served run (OpenAI's model object plus the model card: family,
    recipe, the training run's metrics and its evaluation's, where they were written)."""
    path = Path(run.path)
    run_dir = path.parent.parent if run.kind == "checkpoint" else path.parent
    metrics: dict[str, Any] = {}
    for name, key in (("metrics.json", "metrics"), ("eval_metrics.json", "eval_metrics")):
        for folder in (path, run_dir) if run.kind == "export" else (run_dir,):
            try:
                found = json.loads((folder / name).read_text()).get("metrics")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(found, dict):
                metrics[key] = {k: v for k, v in found.items() if isinstance(v, int | float)}
                break
    cfg = run.config if run.config is not None else {}
    choices = ((cfg.get("zoo_run") or {}).get("choices") or {}) if hasattr(cfg, "get") else {}
    return {
        "id": settings.get("model_name") or f"zoo-{run.family}",
        "object": "model",
        "created": int(path.stat().st_mtime),
        "owned_by": "zoo",
        "family": run.family,
        "recipe": choices.get("experiment") or "defaults",
        "model_config": choices.get("model"),
        "data_config": choices.get("data"),
        "source": run.kind,
        "backend": settings.get("backend", "torch"),
        **metrics,
    }


class ZooSpec(LitSpec):
    """The HTTP side of a family's API (runs in the server process): `parse` a request into the payload
    its worker reads, `respond` with the worker's result. Subclasses set `path` and implement both;
    streaming families override `handle`."""

    path = "/predict"

    def __init__(self, limits: dict[str, Any], info: dict[str, Any]):
        super().__init__()
        self.api_path = self.path
        self.limits = dict(limits)
        self.info = dict(info)

    @property
    def max_body_bytes(self) -> int:
        return int(self.limits.get("max_body_bytes", 1 << 20))

    def pre_setup(self, lit_api: Any) -> None:
        self.add_endpoint(self.api_path, self.handle, ["POST"])

    def decode_request(self, request: Any, context_kwargs: Any = None) -> Any:
        return request

    def encode_response(self, output: Any, context_kwargs: Any = None) -> Any:
        return output

    def parse(self, body: bytes, content_type: str, query: dict[str, str]) -> Any:
        raise NotImplementedError

    def respond(self, result: Any, payload: Any) -> Any:
        return result

    def submit(self, payload: Any, stream: bool = False) -> tuple[str, ResponseBufferItem]:
        """Queue `payload` for the inference worker; its answer arrives in the returned buffer item."""
        uid = str(uuid.uuid4())
        item = ResponseBufferItem(event=asyncio.Event(), response_queue=deque() if stream else None)
        self.response_buffer[uid] = item
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), payload))
        return uid, item

    async def call(self, payload: Any) -> Any:
        uid, item = self.submit(payload)
        try:
            await item.event.wait()
        finally:
            self.response_buffer.pop(uid, None)
        result, status = item.response
        if status == LitAPIStatus.ERROR:
            raise RequestError("the model failed on this request (see the server log)", None, 500)
        if isinstance(result, dict) and ERROR_KEY in result:
            raise RequestError(result[ERROR_KEY], result.get("param"), 400)
        return result

    async def handle(self, request: Request) -> Any:
        try:
            body = await read_body(request, self.max_body_bytes)
            payload = self.parse(body, request.headers.get("content-type", ""), dict(request.query_params))
            return JSONResponse(self.respond(await self.call(payload), payload))
        except RequestError as err:
            return error_response(err)


def table_request(
    body: bytes, content_type: str, query: dict[str, str], key: str, options: type[BaseModel], max_rows: int
) -> tuple[dict[str, Any], Any]:
    """A request carrying a table: a JSON object with the rows under `key` (a list of records) and the
    `options` fields beside them, or a CSV body (``Content-Type: text/csv``) with the options in the query
    string. Returns ({"records": [...]} or {"csv": text}, the options)."""
    if "csv" in content_type.lower():
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("body: a CSV body must be UTF-8 text", "body") from None
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            raise RequestError("body: the CSV has no rows (expected a header row and rows)", "body")
        if len(lines) - 1 > max_rows:
            raise RequestError(f"body: {len(lines) - 1} rows is more than max_rows={max_rows}", "body", 413)
        return {"csv": text}, validate(options, dict(query), strict=False)
    data = parse_json(body)
    if not isinstance(data, dict):
        raise RequestError(f"body: expected a JSON object with '{key}', got {type(data).__name__}", "body")
    records = data.pop(key, None)
    if records is None:
        raise RequestError(f"field '{key}' is required: a list of rows (objects of column: value)", key)
    if not isinstance(records, list) or not records:
        raise RequestError(
            f"field '{key}': expected a non-empty list of rows (objects of column: value)", key
        )
    if len(records) > max_rows:
        raise RequestError(f"field '{key}': {len(records)} rows is more than max_rows={max_rows}", key, 413)
    for i, row in enumerate(records):
        if not isinstance(row, dict):
            raise RequestError(
                f"field '{key}.{i}': expected an object of column: value, got {type(row).__name__}", key
            )
        for col, value in row.items():
            if value is not None and not isinstance(value, str | int | float | bool):
                raise RequestError(
                    f"field '{key}.{i}.{col}': expected a string, number or null, got {type(value).__name__}",
                    key,
                )
    return {"records": records}, validate(options, data)


def table_frame(payload: dict[str, Any], as_text: bool = False) -> Any:
    """The DataFrame of a `table_request` payload (CSV read by pandas; ``as_text``: every value a string,
    as event logs are read)."""
    import io

    import pandas as pd

    if "csv" in payload:
        try:
            if as_text:
                return pd.read_csv(io.StringIO(payload["csv"]), dtype=str, keep_default_na=True)
            return pd.read_csv(io.StringIO(payload["csv"]))
        except Exception as err:
            raise ZooError(
                f"body: not a readable CSV ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
            ) from err
    frame = pd.DataFrame.from_records(payload["records"])
    if as_text:
        frame = frame.astype(object).where(frame.notna(), None)
        frame = frame.apply(lambda col: col.map(lambda v: None if v is None else str(v)))
    return frame


class ZooAPI(ls.LitAPI):
    """The worker side of a family's API: loads the run (`load_run`) in the inference worker and answers
    the payloads its `ZooSpec` queued. Non-streaming families implement `answer(payload)`; a `ZooError`
    there is that request's 400, the rest of the batch goes on."""

    error_param: str | None = None
    """The request field a `ZooError` of `answer` is about (the table's key)."""

    def __init__(self, run_path: str, settings: dict[str, Any], spec: ZooSpec, **litapi: Any):
        litapi.setdefault("max_batch_size", int(settings.get("max_batch_size", 1)))
        litapi.setdefault("batch_timeout", float(settings.get("batch_timeout", 0.0)))
        super().__init__(api_path=spec.api_path, spec=spec, **litapi)
        self.run_path = str(run_path)
        self.settings = dict(settings)

    def setup(self, device: str) -> None:
        import torch

        from zoo.core.family import load_run

        if self.settings.get("threads"):
            torch.set_num_threads(int(self.settings["threads"]))
        self.run = load_run(self.run_path)
        self.load(self.run)

    def load(self, run: Any) -> None:
        """Prepare what `answer` needs (the loaded run is `self.run`)."""

    def answer(self, payload: Any) -> Any:
        raise NotImplementedError

    def decode_request(self, request: Any, **kwargs: Any) -> Any:
        return request

    def encode_response(self, output: Any, **kwargs: Any) -> Any:
        return output

    def _one(self, payload: Any) -> Any:
        try:
            return self.answer(payload)
        except ZooError as err:
            return worker_error(err, self.error_param)

    def predict(self, x: Any, **kwargs: Any) -> Any:
        if self.max_batch_size > 1:
            return [self._one(p) for p in x]
        return self._one(x)
