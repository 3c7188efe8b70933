"""TFT over HTTP: ``POST /v1/forecast`` (`ZooModule.serve_api` of the TFT family).

The body is recent history: a JSON object ``{"rows": [{"timestamp": ..., "series": ..., <targets>,
<covariates>}, ...]}`` or the same table as CSV (``Content-Type: text/csv``), with the training run's
column mapping, exactly what ``zoo.predict input=`` reads. The answer is `zoo.tft.predict.forecast`'s table
(the numbers of ``zoo.predict``'s forecast.csv): one record per series x target x future step with the
point forecast and the calibrated quantiles. A series the model was not trained on is refused unless the
request sets ``allow_unknown_series`` (then it is forecast as ``zoo.predict`` does, ``known_series:
false``); a series shorter than the encoder window is refused by `forecast` itself.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from zoo.core.errors import ZooError
from zoo.core.serving import ZooAPI, ZooSpec, model_info, table_frame, table_request


class ForecastOptions(BaseModel):
    """Fields of ``POST /v1/forecast`` beside ``rows`` (or query parameters of a CSV body)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    """Informational: the server serves one model."""
    allow_unknown_series: bool = False
    """Forecast series the model never saw (the unknown-series encoding) instead of refusing them."""


class ForecastSpec(ZooSpec):
    path = "/v1/forecast"

    def parse(self, body: bytes, content_type: str, query: dict[str, str]) -> dict[str, Any]:
        table, options = table_request(
            body, content_type, query, "rows", ForecastOptions, int(self.limits["max_rows"])
        )
        return {**table, "allow_unknown_series": options.allow_unknown_series}

    def respond(self, result: Any, payload: Any) -> Any:
        return {"object": "forecast", "model": self.info["id"], **result}


class ForecastAPI(ZooAPI):
    """The inference worker: `forecast` for each request of a batch."""

    error_param = "rows"

    def load(self, run: Any) -> None:
        self.module = run.module
        self.onnx = None
        if self.settings.get("backend") == "onnx":
            from pathlib import Path

            from zoo.tft.export import ONNX_FILE, OnnxForecaster

            self.onnx = OnnxForecaster(Path(run.path) / ONNX_FILE, self.module)

    def answer(self, payload: dict[str, Any]) -> dict[str, Any]:
        from omegaconf import OmegaConf

        from zoo.tft import sources as S
        from zoo.tft.predict import forecast, map_input_columns

        where = "rows" if "records" in payload else "body"
        run, module = self.run, self.module
        data_cfg = run.config.get("data") if run.config is not None else None
        columns = (data_cfg.get("columns") if data_cfg is not None else None) or {}
        columns = OmegaConf.to_container(columns) if OmegaConf.is_config(columns) else dict(columns)
        df = map_input_columns(table_frame(payload), columns, where)
        if "timestamp" in df.columns:
            unit = data_cfg.get("timestamp_unit") if data_cfg is not None else None
            df["timestamp"] = S.to_timestamps(
                df["timestamp"], unit, where, columns.get("timestamp") or "timestamp"
            )
        module._cpu_threads()
        try:
            fc = forecast(module, df, onnx=self.onnx, where=where)
        finally:
            module._restore_threads()
        unknown = sorted(fc.loc[~fc["known_series"], "series"].unique())
        if unknown and not payload.get("allow_unknown_series"):
            raise ZooError(
                f"{where}: series '{unknown[0]}' was not in the training data ({len(unknown)} such); set "
                '"allow_unknown_series": true to forecast it with the unknown-series encoding'
            )
        table = fc.drop(columns=["time_idx"])
        table["timestamp"] = table["timestamp"].map(lambda t: t.isoformat())
        return {
            "series": int(table["series"].nunique()),
            "horizon": int(module.prediction_length),
            "step": module.preprocess["step"],
            "quantiles": [float(q) for q in module.quantiles],
            "forecast": table.to_dict(orient="records"),
        }


def serve_api(module: Any, settings: dict[str, Any], run: Any) -> ForecastAPI:
    spec = ForecastSpec(settings, model_info(run, settings))
    return ForecastAPI(settings["ckpt_path"], settings, spec)
