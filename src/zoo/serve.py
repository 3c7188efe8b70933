"""`python -m zoo.serve ckpt_path=<checkpoint | run folder | export folder>`: serve a model over HTTP.

    python -m zoo.serve ckpt_path=logs/train/runs/<time> port=8000             # GPT: /v1/completions
    python -m zoo.serve ckpt_path=<run>/export backend=onnx port=8001          # TFT: /v1/forecast

The run is loaded by `zoo.core.family.load_run` (the same checks as every entry point); its family's
`ZooModule.serve_api` gives the routes (`zoo.core.serving`), served by LitServe. Every server has
``GET /health`` and ``GET /v1/models`` (the model card: family, recipe, metrics). SIGTERM stops taking
connections, finishes the requests in flight, then exits 0. docs/serving.md has every route.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zoo.core.cli import hydra_entry
from zoo.core.errors import ZooError

BACKENDS = ("torch", "onnx")
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe binds
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def settings_of(cfg: DictConfig) -> dict[str, Any]:
    """The serve config's own keys, checked, as a plain dict (what the family's API reads)."""
    keys = [k for k in cfg if k not in ("paths", "hydra", "defaults")]
    out = {k: OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in keys}
    if out.get("backend") not in BACKENDS:
        raise ZooError(f"backend={out.get('backend')}: expected one of {', '.join(BACKENDS)}")
    if out.get("host") not in HOSTS:
        raise ZooError(f"host={out.get('host')}: expected one of {', '.join(HOSTS)}")
    port = out.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1024 <= port <= 65535:
        raise ZooError(f"port={port}: expected an integer from 1024 to 65535")
    for key in ("max_batch_size", "max_tokens_cap", "max_prompts", "max_body_bytes", "max_rows", "max_k"):
        value = out.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ZooError(f"{key}={value} must be a positive integer")
    for key in ("batch_timeout", "request_timeout"):
        value = out.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ZooError(f"{key}={value} must be a number >= 0 (seconds)")
    threads = out.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads <= 0):
        raise ZooError(f"threads={threads} must be a positive integer, or null for torch's default")
    if out.get("device") != "cpu":
        raise ZooError(f"device={out.get('device')}: zoo.serve runs models on the CPU (device=cpu) for now")
    if str(out.get("log_level")) not in LOG_LEVELS:
        raise ZooError(f"log_level={out.get('log_level')}: expected one of {', '.join(LOG_LEVELS)}")
    return out


def finish_then_stop(server: Any) -> None:
    """SIGTERM: the HTTP server processes stop accepting and finish their requests in flight (uvicorn's
    graceful shutdown; the inference worker keeps answering meanwhile), then LitServe stops the workers.
    LitServe's own shutdown closes the worker's queues first, which would drop those requests."""

    def stop() -> None:
        http = [p for p in mp.active_children() if p.name.startswith("LitServer-")]
        for p in http:
            os.kill(p.pid, signal.SIGTERM)
        for p in http:
            p.join(timeout=server.uvicorn_graceful_timeout)
        server._shutdown_event.set()

    def on_term(signum: int, frame: Any) -> None:
        # Not in the handler itself: the main thread is inside a call on the manager's connection.
        threading.Thread(target=stop, name="zoo-serve-stop", daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)


def build_server(api: Any, settings: dict[str, Any]) -> Any:
    import litserve as ls
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from zoo.core.serving import error_body

    server = ls.LitServer(
        api,
        accelerator="cpu",
        devices=1,
        timeout=float(settings["request_timeout"]) or False,
        model_metadata=api.spec.info,
    )
    info = api.spec.info

    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [info]}

    server.app.add_api_route("/v1/models", models, methods=["GET"])

    async def http_error(request: Any, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), None, exc.status_code), status_code=exc.status_code)

    async def invalid(request: Any, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())) or None
        return JSONResponse(
            error_body(f"{field}: {first.get('msg', 'invalid request')}", field), status_code=422
        )

    server.app.add_exception_handler(HTTPException, http_error)
    server.app.add_exception_handler(RequestValidationError, invalid)
    return server


def serve(cfg: DictConfig) -> None:
    from pathlib import Path

    from zoo.core.family import load_run

    settings = settings_of(cfg)
    run = load_run(cfg.ckpt_path)
    if settings["backend"] == "onnx" and run.kind != "export":
        raise ZooError(
            f"backend=onnx needs an export folder with model.onnx, not the checkpoint {run.path}: run "
            f"python -m zoo.export ckpt_path={cfg.ckpt_path} format=onnx, then serve ckpt_path=<that folder>"
        )
    settings["ckpt_path"] = str(Path(run.path).resolve())
    api = run.module.serve_api(settings, run)
    server = build_server(api, settings)
    logging.getLogger("litserve").setLevel(settings["log_level"].upper())
    finish_then_stop(server)
    routes = ", ".join(sorted({path for path, _, _ in api.spec.endpoints} | {"/v1/models", "/health"}))
    print(
        f"[zoo] serving the {run.family} model {run.path} ({settings['backend']}) on "
        f"http://{settings['host']}:{settings['port']} ({routes})",
        flush=True,
    )
    server.run(
        host=settings["host"],
        port=settings["port"],
        log_level=settings["log_level"],
        generate_client_file=False,
        access_log=bool(settings["access_log"]),
    )
    print("[zoo] server stopped", flush=True)


main = hydra_entry("serve", serve)


if __name__ == "__main__":
    main()
