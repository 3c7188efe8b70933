"""Event predictor over HTTP: ``POST /v1/next-events`` (`ZooModule.serve_api` of the events family).

The body is an event history: ``{"events": [{<case id>: ..., <activity>: ..., <timestamp>: ...}, ...],
"k": 5}`` with the training run's column names (its ``data.columns`` mapping, as ``zoo.predict input=``
reads them), or the same table as CSV (``Content-Type: text/csv``, options in the query string:
``?k=5``). The answer is `zoo.events.predict.next_events`' table, the rows of ``zoo.predict``'s
predictions.csv: per case the next ``k`` events, every field's value and probability (and, with a time
head, the days to each event and its time), plus how many input values were never seen in training.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from zoo.core.serving import RequestError, ZooAPI, ZooSpec, model_info, table_frame, table_request


class NextEventsOptions(BaseModel):
    """Fields of ``POST /v1/next-events`` beside ``events`` (or query parameters of a CSV body)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    """Informational: the server serves one model."""
    k: int = Field(5, ge=1)
    """Next events per case."""
    sampling: Literal["greedy", "sample"] = "greedy"
    """greedy: the likeliest value of every field; sample: drawn from softmax(logits / temperature)."""
    temperature: float = Field(1.0, gt=0.0)
    """Sampling temperature (sampling=sample)."""
    seed: int = 1337
    """Seed of the sampler (zoo.predict's default)."""


class NextEventsSpec(ZooSpec):
    path = "/v1/next-events"

    def parse(self, body: bytes, content_type: str, query: dict[str, str]) -> dict[str, Any]:
        limit = int(self.limits["max_rows"])
        table, options = table_request(body, content_type, query, "events", NextEventsOptions, limit)
        if options.k > int(self.limits["max_k"]):
            raise RequestError(
                f"field 'k': {options.k} is above this server's cap of {self.limits['max_k']}", "k"
            )
        return {**table, **options.model_dump(exclude={"model"})}

    def respond(self, result: Any, payload: Any) -> Any:
        return {"object": "next_events", "model": self.info["id"], **result}


class NextEventsAPI(ZooAPI):
    """The inference worker: `next_events` for each request of a batch."""

    error_param = "events"

    def load(self, run: Any) -> None:
        self.onnx = None
        if self.settings.get("backend") == "onnx":
            from zoo.core.onnx import export_onnx_file
            from zoo.events.export import ONNX_FILE, OnnxEvents

            self.onnx = OnnxEvents(export_onnx_file(run, ONNX_FILE), run.module.schema.names)

    def answer(self, payload: dict[str, Any]) -> dict[str, Any]:
        from zoo.events.predict import next_events, run_columns

        where = "events" if "records" in payload else "body"
        frame = table_frame(payload, as_text=True)
        table, cases, unknown = next_events(
            self.run.module, frame, run_columns(self.run), int(payload["k"]), payload["sampling"],
            float(payload["temperature"]), int(payload["seed"]), self.onnx, where,
        )  # fmt: skip
        table = table.astype(object).where(table.notna(), None)
        return {
            "cases": len(cases),
            "k": int(payload["k"]),
            "unknown_values": {n: int(v) for n, v in unknown.items() if v},
            "predictions": table.to_dict(orient="records"),
        }


def serve_api(module: Any, settings: dict[str, Any], run: Any) -> NextEventsAPI:
    spec = NextEventsSpec(settings, model_info(run, settings))
    return NextEventsAPI(settings["ckpt_path"], settings, spec)
