"""The FastAPI app (`create_app`) and the ``peftkit serve`` entry point (`run`).

Endpoints: ``GET /health``, ``GET /v1/adapters``, ``POST /v1/adapters``, ``DELETE
/v1/adapters/{name}``, ``POST /v1/predict`` (every task: what its ``predict`` returns), and for the
adapters of generative tasks (causal-lm; seq2seq-lm, whose prompt is the encoder's source text) the
OpenAI-style ``POST /v1/completions`` and ``POST /v1/chat/completions`` (``model`` names the adapter,
as vLLM does for LoRA modules) plus ``GET /v1/models``. Every error is JSON ``{"error": {"message",
"type"}}``; no response carries a traceback (the server log does).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from . import DEFAULTS
from .auth import BodyLimit, error_body, key_matches
from .batching import Batcher, InternalError
from .registry import Adapter, AdapterError, Registry, parse_spec
from .schemas import ChatCompletionRequest, CompletionRequest, LoadAdapterRequest, PredictRequest

log = logging.getLogger("peftkit.serve")

_KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "request_too_large", 422: "invalid_request"}


@dataclass
class Limits:
    max_inputs: int = DEFAULTS["max_inputs"]
    max_text_chars: int = DEFAULTS["max_text_chars"]
    max_new_tokens: int = DEFAULTS["max_new_tokens"]


def _error(status: int, message: str, kind: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind or _KINDS.get(status, "error")), status_code=status, headers=headers)


class RequestLog:
    """One log line per request: method, path, status, latency, and adapter / batch size when set."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        scope.setdefault("state", {})

        async def tracking_send(event):
            if event["type"] == "http.response.start":
                status[0] = event["status"]
            await send(event)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            state = scope["state"]
            extra = f" adapter={state['adapter']} inputs={state.get('inputs', 0)} batch={state.get('batch', 0)}" if "adapter" in state else ""
            log.info("%s %s %d%s latency_ms=%.1f", scope["method"], scope["path"], status[0], extra,
                     1000 * (time.perf_counter() - start))


def create_app(registry: Registry, *, api_key: str | None = None, max_batch_size: int = DEFAULTS["max_batch_size"],
               max_wait_ms: float = DEFAULTS["max_wait_ms"], max_body_bytes: int = DEFAULTS["max_body_bytes"],
               limits: Limits | None = None) -> FastAPI:
    """The app serving ``registry``'s adapters; its lifespan starts and stops the batcher."""
    limits = limits or Limits()
    batcher = Batcher(registry, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    def authorize(request: Request) -> None:
        if api_key and not key_matches(request.headers.get("authorization"), api_key):
            raise HTTPException(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                                headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="peftkit serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registry, app.state.batcher = registry, batcher
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(RequestLog)
    guarded = [Depends(authorize)]

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return _error(err.status_code, str(err.detail), headers=getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        errors = err.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "Malformed JSON in the request body.", "invalid_json")
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}" for e in errors]
        return _error(422, "Invalid request: " + "; ".join(parts))

    @app.exception_handler(AdapterError)
    async def adapter_error(request: Request, err: AdapterError):
        return _error(err.status, str(err), err.kind)

    @app.exception_handler(InternalError)
    async def internal(request: Request, err: InternalError):
        return _error(500, "Internal error while running the model; see the server log.", "internal_error")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        log.error("unexpected %s on %s %s", type(err).__name__, request.method, request.url.path)
        return _error(500, "Internal error; see the server log.", "internal_error")

    # ------------------------------------------------------------------ helpers

    def check_texts(texts: list[Any], adapter: Adapter) -> list[Any]:
        """The inputs as the adapter's task reads them (a 422 naming the first it cannot use)."""
        from ..tasks import get_task

        if len(texts) > limits.max_inputs:
            raise HTTPException(422, f"{len(texts)} inputs in one request; the limit is {limits.max_inputs} (--max-inputs).")
        task, parsed = get_task(adapter.task), []
        for i, text in enumerate(texts):
            try:
                value = task.parse_input(text)
            except ValueError as err:
                raise HTTPException(422, f"Input {i}: {err}.") from None
            size = task.input_size(value)
            if size > limits.max_text_chars:
                raise HTTPException(422, f"Input {i} has {size} characters; the limit is {limits.max_text_chars} (--max-text-chars).")
            problem = task.check_input(value)
            if problem:
                raise HTTPException(422, f"Input {i} {problem}.")
            parsed.append(value)
        return parsed

    def check_tokens(value: int) -> int:
        if value > limits.max_new_tokens:
            raise HTTPException(422, f"{value} new tokens asked for; the limit is {limits.max_new_tokens} (--max-new-tokens).")
        return value

    def generative(name: str) -> Adapter:
        from ..tasks import TASKS, get_task

        adapter = registry.get(name)
        if not get_task(adapter.task).generative:
            kinds = " or ".join(n for n, cls in TASKS.items() if cls.generative)
            raise HTTPException(422, f"Adapter {name!r} is a {adapter.task} adapter; completions need a {kinds} one (use /v1/predict).")
        return adapter

    async def run(request: Request, adapter: Adapter, texts: list[str], max_new_tokens: int) -> list[dict[str, Any]]:
        texts = check_texts(texts, adapter)
        request.state.adapter, request.state.inputs = adapter.name, len(texts)
        rows, batch = await batcher.submit(adapter, texts, max_new_tokens)
        request.state.batch = batch
        return rows

    def completion_usage(adapter: Adapter, prompt: str, text: str, max_tokens: int) -> tuple[dict[str, int], str]:
        from ..tasks import get_task

        task = get_task(adapter.task)
        prompt_ids = task.prompt_ids(adapter.tokenizer, prompt) if hasattr(task, "prompt_ids") else adapter.tokenizer(prompt)["input_ids"]
        prompt_tokens = len(prompt_ids)
        completion_tokens = len(adapter.tokenizer(text, add_special_tokens=False)["input_ids"])
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
        return usage, "length" if completion_tokens >= max_tokens else "stop"

    # ------------------------------------------------------------------ endpoints

    @app.get("/health")
    async def health():
        return {"status": "ok", "adapters": len(registry.adapters)}

    @app.get("/v1/adapters", dependencies=guarded)
    async def list_adapters():
        return {"adapters": registry.describe()}

    @app.get("/v1/models", dependencies=guarded)
    async def list_models():
        return {"object": "list", "data": [{"id": a["name"], "object": "model", "owned_by": "peftkit"} for a in registry.describe()]}

    @app.post("/v1/adapters", dependencies=guarded, status_code=201)
    async def load_adapter(body: LoadAdapterRequest):
        adapter = await batcher.call(registry.load, body.name, body.path, True)
        return {"adapter": adapter.describe()}

    @app.delete("/v1/adapters/{name}", dependencies=guarded)
    async def unload_adapter(name: str):
        await batcher.call(registry.unload, name)
        return {"deleted": name}

    @app.post("/v1/predict", dependencies=guarded)
    async def predict(request: Request, body: PredictRequest):
        adapter = registry.get(body.adapter)
        tokens = check_tokens(body.max_new_tokens) if body.max_new_tokens else min(32, limits.max_new_tokens)
        rows = await run(request, adapter, body.inputs, tokens)
        return {"adapter": adapter.name, "predictions": rows}

    @app.post("/v1/completions", dependencies=guarded)
    async def completions(request: Request, body: CompletionRequest):
        if body.stream:
            raise HTTPException(422, "stream=true is not supported: leave it out.")
        adapter = generative(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        max_tokens = check_tokens(body.max_tokens or min(16, limits.max_new_tokens))
        rows = await run(request, adapter, prompts, max_tokens)
        choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for i, (prompt, row) in enumerate(zip(prompts, rows, strict=True)):
            used, finish = completion_usage(adapter, prompt, row["generated"], max_tokens)
            usage = {k: usage[k] + used[k] for k in usage}
            choices.append({"index": i, "text": row["generated"], "finish_reason": finish, "logprobs": None})
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": adapter.name, "choices": choices, "usage": usage}

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat_completions(request: Request, body: ChatCompletionRequest):
        if body.stream:
            raise HTTPException(422, "stream=true is not supported: leave it out.")
        adapter = generative(body.model)
        if len(body.messages) != 1 or body.messages[0].role != "user":
            raise HTTPException(422, "Send exactly one message, from the user: peftkit serves the single-turn layout its SFT trains.")
        prompt = body.messages[0].content
        max_tokens = check_tokens(body.max_completion_tokens or body.max_tokens or min(16, limits.max_new_tokens))
        (row,) = await run(request, adapter, [prompt], max_tokens)
        usage, finish = completion_usage(adapter, prompt, row["generated"], max_tokens)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": adapter.name, "usage": usage,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": row["generated"]}, "finish_reason": finish}]}

    return app


# --------------------------------------------------------------------------- the command


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build_registry(args: argparse.Namespace) -> Registry:
    """The registry the command line describes, with its start-up adapters loaded."""
    registry = Registry(base=args.model, quantization=args.quantization, adapter_dir=args.adapter_dir, device=args.device)
    specs = [parse_spec(s) for s in args.checkpoint or []]
    for spec in args.adapter or []:
        if "=" not in spec:
            raise ValueError(f"--adapter expects NAME=PATH, got {spec!r}.")
        specs.append(parse_spec(spec))
    if not specs and registry.adapter_dir is None:
        raise ValueError("Nothing to serve: give a CHECKPOINT, --adapter NAME=PATH, or --adapter-dir DIR to load adapters at run time.")
    for name, path in specs:
        try:
            registry.load(name, path)
        except AdapterError as err:
            raise ValueError(str(err)) from None
    return registry


def run(args: argparse.Namespace) -> int:
    """``peftkit serve``: load the adapters, then serve until SIGINT/SIGTERM (in-flight requests finish)."""
    import uvicorn

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = args.api_key or os.environ.get("PEFTKIT_API_KEY") or None
    for flag in ("max_batch_size", "max_inputs", "max_text_chars", "max_new_tokens", "max_body_bytes"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be 1 or more.")
    registry = build_registry(args)
    if not _is_loopback(args.host) and not api_key:
        log.warning("serving on %s without --api-key: anyone who can reach this port can use it", args.host)
    app = create_app(registry, api_key=api_key, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                     max_body_bytes=args.max_body_bytes,
                     limits=Limits(args.max_inputs, args.max_text_chars, args.max_new_tokens))
    log.info("serving %d adapter(s) on http://%s:%d", len(registry.adapters), args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                timeout_graceful_shutdown=30)
    return 0
