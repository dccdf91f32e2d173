"""The FastAPI application around a :class:`toolkit.serve.model.ServedModel`.

Routes: ``GET /health`` (200 once the model is loaded and warmed up, 503 before), ``GET /v1/model``,
``GET /metrics`` (Prometheus text), and the task's endpoint — ``POST /v1/predict`` (classification),
``/v1/generate`` (language models, ``"stream": true`` for server-sent events) or ``/v1/translate`` (seq2seq). The
other two task endpoints answer 404 naming the right one. Errors are JSON ``{"error": ..., "field": ...}``: 422 for
malformed JSON, a wrong schema or empty input, 413 for a body over ``max_request_bytes``, 503 for a request that
timed out (counted) or came before the model was ready, 500 for a failure inside the model (the server goes on).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import threading
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from toolkit.serve.batcher import Batcher, Decoder, Stream
from toolkit.serve.metrics import Metrics
from toolkit.serve.model import ENDPOINTS, ServedModel
from toolkit.serve.schemas import GenerateRequest, PredictRequest, TranslateRequest


class RequestError(Exception):
    """A request the server refuses: ``status`` and a one-line message naming the field."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def create_app(served: ServedModel, max_batch: int = 16, max_wait_ms: float = 5.0, timeout_s: float = 30.0,
               max_request_bytes: int = 1_000_000) -> Any:
    """The ASGI app (FastAPI) serving ``served``."""
    metrics = Metrics()
    state: dict[str, Any] = {"ready": False, "batcher": None, "decoder": None}

    def run_batch(items: list[Any]) -> list[Any]:
        probs = served.infer(served.collate(items))
        return [row for row in probs]

    def warm_up() -> None:
        # one pass through the whole path (encode, collate, model), so the first user request pays no set-up
        if served.endpoint == "predict":
            sample = _warm_input(served)
            run_batch(served.encode([sample]))
        else:
            ids = served.tokenizer("warm up")["input_ids"] or [0]
            served.step(np.asarray(ids, dtype=np.int64), None)
        state["ready"] = True

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if served.endpoint == "predict":
            state["batcher"] = Batcher(run_batch, max_batch, max_wait_ms, on_batch=metrics.batch)
            state["batcher"].start()
        else:
            state["decoder"] = Decoder(served.step, on_step=metrics.decode_step)
            state["decoder"].start()
        threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
        yield
        if state["batcher"] is not None:
            await state["batcher"].stop()
        if state["decoder"] is not None:
            state["decoder"].stop()

    app = FastAPI(title="edge-toolkit serve", version="1",
                  description=f"{served.task.name} · variant `{served.variant}` of run `{served.run.name}` · "
                              f"{served.runtime}", lifespan=lifespan)
    app.add_middleware(_BodyLimit, limit=max_request_bytes, metrics=metrics)

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError) -> JSONResponse:
        metrics.request(request.url.path, e.status)
        return JSONResponse({"error": e.message, "field": e.field}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        if first.get("type") == "json_invalid":
            where = None  # its location is a character offset, not a field
            message = f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
        else:
            message = f"{where or 'body'}: {first.get('msg', 'invalid')}"
        metrics.request(request.url.path, 422)
        return JSONResponse({"error": message, "field": where}, status_code=422)

    def ready() -> None:
        if not state["ready"]:
            raise RequestError(503, "the model is loading; retry when GET /health answers 200")

    def wrong(endpoint: str) -> None:
        if served.endpoint != endpoint:
            raise RequestError(404, f"this server serves the {served.task.name} task: use POST "
                                    f"{ENDPOINTS[served.endpoint]}, not {ENDPOINTS[endpoint]}")

    @app.get("/health")
    async def health() -> Any:
        if not state["ready"]:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        info = served.describe()
        info.update(max_batch=max_batch, max_wait_ms=max_wait_ms, ready=state["ready"])
        if served.endpoint == "predict":
            info["batching_note"] = ("scores of a float variant do not depend on batching (within 1e-5); dynamic "
                                     "INT8 quantizes activations with per-batch scales, so its scores move "
                                     "slightly with the other requests in a batch (labels rarely)")
        return info

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        body, content_type = metrics.render()
        return PlainTextResponse(body, media_type=content_type)

    @app.post("/v1/predict")
    async def predict(body: PredictRequest, request: Request) -> JSONResponse:
        wrong("predict")
        ready()
        started = time.perf_counter()
        inputs = _decode_inputs(served, body.inputs)
        try:
            items = served.encode(inputs)
        except Exception as e:  # noqa: BLE001 - an input the task cannot encode is the caller's to fix
            raise RequestError(422, f"inputs: cannot be encoded ({type(e).__name__}: {str(e)[:200]})", "inputs")
        probs = await _within(state["batcher"].submit(items), timeout_s, metrics, request.url.path)
        out = [_prediction(row, served.labels) for row in probs]
        metrics.request(request.url.path, 200, time.perf_counter() - started)
        # a JSONResponse as is: FastAPI would walk a returned dict through jsonable_encoder first (~0.3 ms here)
        return JSONResponse({"predictions": out, "variant": served.variant})

    async def start_stream(prompt: list[int], body: Any) -> tuple[asyncio.Queue, Stream]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stream = Stream(prompt=prompt, max_new_tokens=body.max_new_tokens, temperature=body.temperature,
                        top_k=body.top_k, top_p=body.top_p, seed=body.seed, stop_ids=set(served.stop_ids),
                        forced_first=served.forced_first, forced_last=served.forced_last,
                        emit=lambda token, finish: loop.call_soon_threadsafe(queue.put_nowait, (token, finish)))
        state["decoder"].add(stream)
        return queue, stream

    async def collect(queue: asyncio.Queue) -> tuple[list[int], str]:
        tokens: list[int] = []
        while True:
            token, finish = await queue.get()
            if finish is not None:
                return tokens, finish
            tokens.append(token)

    def prompt_ids(text: str, field: str, cap_new: int) -> list[int]:
        ids = served.encode_prompt(text)
        if (served.endpoint == "generate" and served.prompt_limit is not None
                and len(ids) + cap_new > served.prompt_limit + 1):
            raise RequestError(422, f"{field}: {len(ids)} prompt tokens + max_new_tokens {cap_new} exceed the "
                                    f"model's {served.prompt_limit + 1} positions", field)
        return ids

    def text_of(tokens: list[int]) -> str:
        return served.detokenize(tokens)

    async def sse(queue: asyncio.Queue, stream: Stream, request: Request, path: str,
                  started: float) -> AsyncIterator[str]:
        tokens: list[int] = []
        shown = ""
        try:
            while True:
                token, finish = await queue.get()
                if finish is not None:
                    yield "data: " + json.dumps({"done": True, "text": text_of(tokens), "tokens": len(tokens),
                                                 "finish_reason": finish}) + "\n\n"
                    metrics.request(path, 200, time.perf_counter() - started)
                    return
                tokens.append(token)
                text = text_of(tokens)
                delta, shown = text[len(shown):], text
                yield "data: " + json.dumps({"token": token, "text": delta}) + "\n\n"
        finally:
            stream.cancelled = True  # a client that went away stops costing decode steps

    @app.post("/v1/generate")
    async def generate(body: GenerateRequest, request: Request) -> Any:
        wrong("generate")
        ready()
        started = time.perf_counter()
        queue, stream = await start_stream(prompt_ids(body.prompt, "prompt", body.max_new_tokens), body)
        if body.stream:
            return StreamingResponse(sse(queue, stream, request, request.url.path, started),
                                     media_type="text/event-stream")
        try:
            tokens, finish = await _within(collect(queue), timeout_s, metrics, request.url.path)
        finally:
            stream.cancelled = True
        metrics.request(request.url.path, 200, time.perf_counter() - started)
        return {"text": text_of(tokens), "tokens": len(tokens), "finish_reason": finish, "variant": served.variant}

    @app.post("/v1/translate")
    async def translate(body: TranslateRequest, request: Request) -> Any:
        wrong("translate")
        ready()
        started = time.perf_counter()
        if body.stream and len(body.inputs) != 1:
            raise RequestError(422, "stream: streams one input at a time; send one text in inputs", "stream")
        runs = [await start_stream(prompt_ids(text, f"inputs.{i}", 0), body) for i, text in enumerate(body.inputs)]
        if body.stream:
            return StreamingResponse(sse(*runs[0], request, request.url.path, started), media_type="text/event-stream")
        try:
            done = await _within(asyncio.gather(*(collect(q) for q, _ in runs)), timeout_s, metrics,
                                 request.url.path)
        finally:
            for _, s in runs:
                s.cancelled = True
        metrics.request(request.url.path, 200, time.perf_counter() - started)
        return {"translations": [{"text": text_of(t), "tokens": len(t), "finish_reason": f} for t, f in done],
                "variant": served.variant}

    return app


async def _within(awaitable: Any, timeout_s: float, metrics: Metrics, path: str) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except asyncio.TimeoutError:
        metrics.timeout(path)
        raise RequestError(503, f"timed out after {timeout_s:g} s (the server is overloaded); retry later") from None
    except RequestError:
        raise
    except Exception as e:  # noqa: BLE001 - the model failed on this batch: the request fails, the server goes on
        raise RequestError(500, f"inference failed: {type(e).__name__}: {str(e)[:200]}") from None


def _prediction(row: Any, labels: list[str]) -> dict[str, Any]:
    best = int(row.argmax())
    return {"label": labels[best], "score": float(row[best]),
            "scores": {name: float(p) for name, p in zip(labels, row)}}


def _decode_inputs(served: ServedModel, inputs: list[str]) -> list[Any]:
    """Texts cleaned as the training data was; images decoded from base64 (a data: URL prefix is accepted)."""
    from toolkit.data.clean import clean_text

    if not served.task.data.images:
        out = [clean_text(x, served.clean) for x in inputs]
        empty = next((i for i, x in enumerate(out) if not x.strip()), None)
        if empty is not None:
            raise RequestError(422, f"inputs.{empty}: empty text (after the recipe's cleaning)", f"inputs.{empty}")
        return out
    from toolkit.data.images import decode_image

    images = []
    for i, x in enumerate(inputs):
        data = x.split(",", 1)[1] if x.startswith("data:") else x
        try:
            images.append(decode_image(base64.b64decode(data, validate=True)))
        except (binascii.Error, ValueError) as e:
            raise RequestError(422, f"inputs.{i}: not a base64 PNG/JPEG image ({e})", f"inputs.{i}") from None
    return images


def _warm_input(served: ServedModel) -> Any:
    if served.task.data.images:
        return np.full((32, 32, 3), 0.5, dtype=np.float32)
    return "warm up"


class _BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes (declared or streamed), before parsing."""

    def __init__(self, app: Any, limit: int, metrics: Metrics) -> None:
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge()
            return message
        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(scope, send)

    async def _refuse(self, scope: dict, send: Any) -> None:
        self.metrics.request(scope.get("path", ""), 413)
        body = json.dumps({"error": f"the request body is over {self.limit} bytes (--max-request-bytes); send "
                                    f"fewer or smaller inputs", "field": None}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
