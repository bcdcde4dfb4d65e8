"""The HTTP server: OpenAI-compatible chat completions, model list, retrieval, health and the web chat page."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from medtune.predict import Predictor
from medtune import DEFAULT_MODEL
from medtune.serve import openapi
from medtune.serve.config import ServeConfig, ServeConfigError, config_from_dict, load_config
from medtune.engines.base import (ContextTooLong, EngineBusy, EngineTimeout, EngineUnavailable, GenerationFailed,
                                  RequestRejected)
from medtune.serve.protocol import APIError, ChatRequest, Reply, RetrieveRequest, parse_body, sse, usage
from medtune.serve.runtime import Delta, Outcome, ServedModel, load_models

log = logging.getLogger("medtune.serve")


def create_app(config: ServeConfig, predictors: dict[str, Predictor] | None = None) -> FastAPI:
    """The app over `config`'s models (loaded now); `predictors` by served name skips loading (tests)."""
    api_key = config.resolved_api_key()
    if api_key is None and not config.on_loopback and not config.allow_no_key:
        raise ServeConfigError(
            f"refusing to serve on {config.host} without an API key: anyone who can reach it could use it. "
            "Set MEDTUNE_API_KEY or MEDTUNE_API_KEY_FILE (or api_key_file in the config), "
            "or allow_no_key: true if another layer authenticates")
    if api_key is None:
        log.warning("no API key: anyone who can reach %s:%s can use this server", config.host, config.port)
    models = load_models(config, predictors)
    limits = config.limits
    started = int(time.time())
    page = (files("medtune.serve") / "static" / "index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for model in models.values():
            if watch := getattr(model.engine, "watch", None):  # a server medtune runs: restarted if it dies
                watch()
        yield
        for model in models.values():
            await model.engine.close()

    # No /docs: Swagger UI loads its scripts from a CDN, and this server runs offline.
    app = FastAPI(title="medtune", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=config.hosts())
    app.state.models = models  # for operators and tests: each served model and its engine

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        error = internal_error(exc)
        return JSONResponse(error.body(), status_code=error.status)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key: send the header Authorization: Bearer KEY",
                           code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        """The JSON body, refused with 413 as soon as it passes the limit (declared or not), and with
        408 when it takes longer than body_timeout_s to arrive (a client trickling bytes holds a connection)."""
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":  # a cross-site form post cannot send this type without CORS
            raise APIError(415, "send the body as JSON with the header Content-Type: application/json",
                           code="unsupported_media_type")
        too_large = APIError(413, f"the request body is larger than {limits.max_request_bytes} bytes",
                             code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_request_bytes:
            raise too_large
        body = bytearray()
        try:
            async with asyncio.timeout(limits.body_timeout_s):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limits.max_request_bytes:
                        raise too_large
        except TimeoutError:
            raise APIError(408, f"the request body did not arrive within {limits.body_timeout_s:g} s",
                           code="request_timeout") from None
        return bytes(body)

    def check_size(req: ChatRequest) -> None:
        if len(req.messages) > limits.max_messages:
            raise APIError(400, f"messages: at most {limits.max_messages} messages (got {len(req.messages)})",
                           param="messages", code="invalid_value")
        for i, m in enumerate(req.messages):
            check_length(m.content, f"messages.{i}.content")

    def check_length(text: str, param: str) -> None:
        """Any text a client sends is bounded: the safety check, the tokenizer and the embedder read it."""
        if len(text) > limits.max_message_chars:
            raise APIError(400, f"{param}: at most {limits.max_message_chars} characters (got {len(text)})",
                           param=param, code="invalid_value")

    def pick(name: str | None) -> ServedModel:
        model = models.get(name or config.default_model)
        if model is None:
            raise APIError(404, f"the model {name!r} does not exist; served models: {', '.join(models)}",
                           param="model", code="model_not_found")
        return model

    def api_error(exc: Exception) -> APIError:
        if isinstance(exc, APIError):
            return exc
        if isinstance(exc, EngineTimeout):
            return APIError(504, f"no complete answer within {limits.timeout_s:g} s", type="timeout_error", code="timeout")
        if isinstance(exc, ContextTooLong):
            return APIError(400, str(exc), param="messages", code="context_length_exceeded")
        if isinstance(exc, RequestRejected):
            return APIError(400, str(exc), param="messages", code="invalid_value")
        if isinstance(exc, EngineBusy):
            return APIError(429, str(exc), type="rate_limit_error", code="server_busy",
                            headers={"Retry-After": str(exc.retry_after)})
        if isinstance(exc, EngineUnavailable):
            return APIError(503, str(exc), type="server_error", code="engine_unavailable", headers={"Retry-After": "5"})
        if isinstance(exc, GenerationFailed):  # already logged under its id
            return APIError(500, str(exc), type="server_error")
        return internal_error(exc)

    authorized = [Depends(authorize)]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}  # model names can be paths: they are behind the key, at /v1/models

    @app.get("/v1/models", dependencies=authorized)
    async def list_models() -> dict:
        return {"object": "list", "data": [_model_card(name, started) for name in models]}

    @app.get("/v1/models/{name:path}", dependencies=authorized)
    async def get_model(name: str) -> dict:
        return _model_card(pick(name).name, started)

    @app.post("/v1/retrieve", dependencies=authorized, openapi_extra=openapi.RETRIEVE)
    async def retrieve(request: Request) -> dict:
        req = parse_body(await read_body(request), RetrieveRequest)
        check_length(req.query, "query")
        model = pick(req.model)
        if model.retriever is None:
            raise APIError(400, f"the model {model.name!r} has no retrieval index (set models.{model.name}.index)",
                           param="model", code="no_index")
        hits = await asyncio.to_thread(model.retriever.search, req.query, k=req.k)
        return {"object": "list", "model": model.name, "query": req.query,
                "data": [{"id": h.id, "score": float(h.score), "url": h.url, "title": h.title, "text": h.text} for h in hits]}

    @app.post("/v1/chat/completions", dependencies=authorized, openapi_extra=openapi.CHAT_COMPLETIONS)
    async def chat_completions(request: Request):
        req = parse_body(await read_body(request), ChatRequest)
        check_size(req)
        model = pick(req.model)
        max_tokens = req.max_completion_tokens or req.max_tokens or min(model.config.generation.max_new_tokens, limits.max_tokens)
        if max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens: at most {limits.max_tokens} (got {max_tokens})", param="max_tokens",
                           code="invalid_value")
        events = model.answer([m.as_dict() for m in req.messages], max_tokens=max_tokens, temperature=req.temperature,
                              top_p=req.top_p, timeout=limits.timeout_s)
        reply = Reply(model.name)
        try:  # up to the first text, errors still get their own HTTP status
            first = await anext(events)
        except Exception as exc:
            await events.aclose()
            raise api_error(exc) from None
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        if req.stream:
            return StreamingResponse(_stream(reply, first, events, include_usage, api_error), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        collecting = asyncio.ensure_future(_collect(first, events))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({collecting, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not collecting.done():  # the client went away: stop its row instead of finishing an unread answer
                collecting.cancel()
                return JSONResponse(APIError(499, "the client closed the request").body(), status_code=499)
            text, item = collecting.result()
        except Exception as exc:
            raise api_error(exc) from None
        finally:
            gone.cancel()
            await asyncio.gather(collecting, return_exceptions=True)
            await events.aclose()
        return reply.completion(text, item.finish_reason, usage(item.prompt_tokens, item.completion_tokens), item.medtune)

    return app


def internal_error(exc: BaseException) -> APIError:
    """A generic 500: the cause goes to the log under an id the client can quote, never to the client."""
    log_id = uuid.uuid4().hex[:12]
    log.error("internal error (log id %s)", log_id, exc_info=exc)
    return APIError(500, f"internal error (log id {log_id})", type="server_error")


async def _collect(first, events: AsyncIterator) -> tuple[str, Outcome]:
    parts, item = [], first
    while not isinstance(item, Outcome):
        parts.append(item.text)
        item = await anext(events)
    return "".join(parts), item


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body is already read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(reply: Reply, first, events: AsyncIterator, include_usage: bool, api_error) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, one chunk per text delta, a final chunk (with `medtune`), [DONE].
    An error after the first byte can no longer change the status: it is sent as an error event."""
    yield sse(reply.chunk({"role": "assistant", "content": ""}))
    item = first
    try:
        while not isinstance(item, Outcome):
            yield sse(_content_chunk(reply, item))
            item = await anext(events)
        extra = {"medtune": item.medtune} if item.medtune is not None else {}
        yield sse(reply.chunk({}, item.finish_reason, **extra))
        if include_usage:
            yield sse(reply.usage_chunk(usage(item.prompt_tokens, item.completion_tokens)))
    except Exception as exc:
        yield sse(api_error(exc).body())
    finally:
        await events.aclose()  # a client that disconnects cancels us here: its row stops generating
    yield sse("[DONE]")


def _content_chunk(reply: Reply, delta: Delta) -> dict:
    # Safety advice and the sources block are marked, so the web page can show them apart.
    return reply.chunk({"content": delta.text}, **({"medtune": {"part": delta.part}} if delta.part != "answer" else {}))


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "medtune"}


def serve(config: ServeConfig, predictors: dict[str, Predictor] | None = None) -> None:
    import uvicorn

    # Beyond max_connections uvicorn answers 503 at once, instead of holding every socket a client opens.
    uvicorn.run(create_app(config, predictors), host=config.host, port=config.port, log_level="info",
                limit_concurrency=config.limits.max_connections)


def serve_from_args(config_path: str | None, *, model: str | None = None, index: str | None = None,
                    host: str | None = None, port: int | None = None, api_key: str | None = None,
                    api_key_file: str | None = None, engine=None) -> None:
    """`medtune serve [CONFIG] --model REF --index DIR --host --port --api-key --api-key-file --engine`.

    Without CONFIG, --model (default: the offline default model) is served alone under its own
    reference as name; with one, --model and --index replace the default model's. Flags left as
    None keep the config's values.
    """
    data = load_config(config_path).model_dump() if config_path else {"models": {model or DEFAULT_MODEL: {"model": model or DEFAULT_MODEL}}}
    default = data.get("default_model") or next(iter(data["models"]))
    overrides = {"model": model, "index": index, "engine": engine.model_dump(exclude_defaults=True) if engine else None}
    data["models"][default].update({k: v for k, v in overrides.items() if v is not None})
    flags = {"host": host, "port": port, "api_key": api_key, "api_key_file": api_key_file}
    data.update({k: v for k, v in flags.items() if v is not None})
    serve(config_from_dict(data, origin=config_path or "medtune serve"))
