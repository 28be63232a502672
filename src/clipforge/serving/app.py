"""The HTTP layer: request schemas, routes, errors, limits and metrics around a ``Service``.

``create_app(config, model=None, index=None)`` returns the FastAPI app; the model (and index) are loaded at startup
when not given. Every error is ``{"error": {"message", "type", "code"}}`` with a 4xx status (5xx only for a bug, or
503 while busy or shutting down); ``/docs`` and ``/openapi.json`` describe every route.
"""
from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from clipforge.serving._deps import import_serving

fastapi = import_serving("fastapi")
import_serving("python_multipart")  # uploads

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402

from clipforge._version import __version__  # noqa: E402
from clipforge.serving.batching import Closed, QueueFull  # noqa: E402
from clipforge.serving.config import ServeConfig  # noqa: E402
from clipforge.serving.inputs import InputError  # noqa: E402
from clipforge.serving.service import NO_INDEX, Input, Service  # noqa: E402

log = logging.getLogger("clipforge.serve")
PAGE = Path(__file__).with_name("static") / "search.html"


# ---------------------------------------------------------------------------------------------------- schemas


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextItem(_Strict):
    type: Literal["text"]
    text: str


class ImageItem(_Strict):
    type: Literal["image"]
    image: str = Field(description="base64 bytes, a data: URI, or an http(s) URL when the server allows URLs")


Item = Annotated[Union[TextItem, ImageItem], Field(discriminator="type")]


class EmbeddingsRequest(_Strict):
    input: Union[str, list[Union[str, Item]]] = Field(
        description="a string, or a list of strings and typed items; strings are texts unless modality is image")
    model: str | None = Field(None, description="accepted for OpenAI clients; the server has one model")
    modality: Literal["text", "image"] = Field("text", description="what plain strings in `input` are")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="output size; only sizes the model was trained for")
    normalize: bool = Field(True, description="unit-length vectors (cosine similarity is a dot product)")
    user: str | None = None


class RankRequest(_Strict):
    query: Union[str, Item] = Field(description="a text (plain string) or a typed text/image item")
    candidates: list[Union[str, Item]] = Field(min_length=1)
    top_n: int | None = Field(None, ge=1)


class ClassifyRequest(_Strict):
    images: list[str] = Field(min_length=1, description="base64, data: URIs or allowed URLs")
    labels: list[str] = Field(min_length=1)
    templates: list[str] = Field(["a photo of a {}."], min_length=1, description="'{}' is replaced by the label")
    top_k: int = Field(5, ge=1)


class SearchRequest(_Strict):
    query: Union[str, Item, None] = Field(None, description="a text, or a typed text/image item")
    vector: list[float] | None = Field(None, description="an embedding of the index's model")
    like: int | None = Field(None, ge=0, description="the position of an indexed image: images like it")
    k: int = Field(10, ge=1, le=1000)
    prefix: str | None = Field(None, description="keep keys (paths) starting with this")
    where: dict[str, Union[str, int, float, bool]] | None = Field(None, description="keep rows with these values")


# ------------------------------------------------------------------------------------------------- plumbing


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers=headers)


def _input(item: Union[str, TextItem, ImageItem], plain: str = "text") -> Input:
    if isinstance(item, str):
        return Input(plain, item)
    return Input("text", item.text) if isinstance(item, TextItem) else Input("image", item.image)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether or not Content-Length is sent: a streamed body
    is counted, and once over the limit the 413 is sent and the app sees the client disconnect."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body over the limit of {self.limit} bytes"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _error(413, message)(scope, receive, send)
        received, started, refused = 0, False, False

        async def counted():
            nonlocal received, refused, started
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.limit:
                    if not started:
                        refused = started = True
                        await _error(413, message)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return event

        async def watched(event):
            nonlocal started
            if refused:
                return  # the 413 was sent: the app's own answer goes nowhere
            started = started or event["type"] == "http.response.start"
            await send(event)

        await self.app(scope, counted, watched)


class Measured:
    """Request counts and latency per route template (never per raw path: bounded label values)."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def watched(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = scope.get("route")
            self.metrics.observe_request(getattr(route, "path", "unmatched"), status[0], start)


def _key_checker(keys: tuple[str, ...]):
    encoded = [k.encode() for k in keys]

    async def check(request: Request) -> None:
        if not encoded:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        # compared with every key in constant time: neither which key nor how much of it matched leaks
        matched = False
        for key in encoded:
            matched |= hmac.compare_digest(given.encode(), key)
        if not matched:
            raise InputError("missing or wrong API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`", 401)

    return check


def _json(content: dict) -> Response:
    """A JSON response of plain values, serialised once (FastAPI's generic encoder walks every float of every
    vector in Python: a third of a small request's time)."""
    return Response(json.dumps(content, separators=(",", ":"), default=_plain).encode(), media_type="application/json")


def _encode(vector, fmt: str):
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()


def open_index(config: ServeConfig, model):
    from clipforge.config import ConfigError
    from clipforge.search import Index
    from clipforge.search.build import check_model

    index = Index(config.index)
    fingerprint = model.fingerprint()
    if fingerprint is None:
        index.close()
        raise ConfigError(f"{config.model} records no weights fingerprint (exported by an older clipforge), so it "
                          f"cannot be checked against {config.index}: export it again with `clipforge export`")
    try:
        check_model(index.store, config.model, config.precision, fingerprint)
    except Exception:
        index.close()
        raise
    return index


# ------------------------------------------------------------------------------------------------------ app


def create_app(config: ServeConfig, model=None, index=None) -> FastAPI:
    """The app; ``model`` (a ``ServingModel``) and ``index`` are loaded at startup from ``config`` when not given."""
    from clipforge.serving.metrics import Metrics

    config.check()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        from clipforge.serving.encoders import load_model

        loaded = model or load_model(config)
        opened = index if index is not None else open_index(config, loaded) if config.index else None
        service = Service(config, loaded, opened, metrics)
        service.start()
        app.state.service = service
        try:
            yield
        finally:
            service.stop()
            if opened is not None and index is None:
                opened.close()

    app = FastAPI(title="clipforge", version=__version__, lifespan=lifespan,
                  description="Embeddings, ranking, zero-shot classification and search with a CLIP model.")
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(Measured, metrics=metrics)  # outermost: it sees the status the client gets
    _add_error_handlers(app)
    _add_routes(app, Depends(_key_checker(config.api_keys)))
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def _bad_input(request, e: InputError):
        return _error(e.status, str(e))

    @app.exception_handler(QueueFull)
    async def _busy(request, e: QueueFull):
        request.app.state.service.metrics.rejected.inc()
        return _error(503, str(e), {"Retry-After": str(e.retry_after_s)})

    @app.exception_handler(Closed)
    async def _closing(request, e: Closed):
        return _error(503, str(e), {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        problems = []
        for err in e.errors()[:3]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where or 'body'}: {err.get('msg')}")
        return _error(422, "; ".join(problems) + " (see /docs for the request schema)")

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        return _error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, f"internal error ({type(e).__name__}); the server logged it")


def service(request: Request) -> Service:
    return request.app.state.service


def _add_routes(app: FastAPI, auth) -> None:
    _add_health_routes(app)
    _add_embedding_routes(app, auth)
    _add_search_routes(app, auth)


def _add_health_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["health"])
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request):
        s = service(request)
        if not s.ready:
            return _error(503, "not ready (starting or shutting down)", {"Retry-After": "1"})
        return {"ready": True, "model": s.model.name, "runtime": s.model.runtime, "embed_dim": s.model.embed_dim,
                "index": None if s.index is None else {"images": len(s.index)}}

    @app.get("/metrics", tags=["health"])
    async def prometheus(request: Request):
        s = service(request)
        return Response(s.metrics.render(s.batcher.depth if s.batcher else 0), media_type=s.metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def page(request: Request):
        if service(request).index is None:
            return RedirectResponse("/docs")
        return HTMLResponse(PAGE.read_text(), headers={"Cache-Control": "no-cache"})


async def _embeddings_response(s: Service, inputs: list[Input], fmt: str, dimensions: int | None,
                               normalize: bool) -> Response:
    if dimensions is not None and dimensions != s.model.embed_dim and dimensions not in s.model.dimensions:
        raise InputError(f"dimensions={dimensions}: {s.model.name} makes {s.model.embed_dim}-d embeddings and "
                         "was not trained to be cut shorter; leave dimensions out")
    embedded = await s.embed(inputs, normalize=normalize)
    data = [{"object": "embedding", "index": i, "embedding": _encode(embedded.vectors[i], fmt),
             **({"truncated": embedded.truncated[i]} if item.kind == "text" else {})}
            for i, item in enumerate(inputs)]
    return _json({"object": "list", "data": data, "model": s.model.name,
                  "usage": {"prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens}})


def _add_embedding_routes(app: FastAPI, auth) -> None:
    @app.get("/v1/models", tags=["embeddings"], dependencies=[auth])
    async def models(request: Request):
        s = service(request)
        return {"object": "list", "data": [{"id": s.model.name, "object": "model", "owned_by": "clipforge"}]}

    @app.post("/v1/embeddings", tags=["embeddings"], dependencies=[auth])
    async def embeddings(body: EmbeddingsRequest, request: Request):
        items = [body.input] if isinstance(body.input, str) else body.input
        inputs = [_input(item, body.modality) for item in items]
        return await _embeddings_response(service(request), inputs, body.encoding_format, body.dimensions,
                                         body.normalize)

    @app.post("/v1/embeddings/upload", tags=["embeddings"], dependencies=[auth])
    async def embeddings_upload(request: Request, files: list[UploadFile] = File(...),
                                encoding_format: Literal["float", "base64"] = Form("float")):
        inputs = [Input("image", await f.read()) for f in files]
        return await _embeddings_response(service(request), inputs, encoding_format, None, True)

    @app.post("/v1/rank", tags=["ranking"], dependencies=[auth])
    async def rank(body: RankRequest, request: Request):
        s = service(request)
        result = await s.rank(_input(body.query), [_input(c) for c in body.candidates])
        order = sorted(range(len(body.candidates)), key=lambda i: -result["scores"][i])[:body.top_n]
        rows = []
        for i in order:
            row = {"index": i, "score": float(result["scores"][i]),
                   "probability": float(result["probabilities"][i])}
            if "sigmoid" in result:
                row["sigmoid"] = float(result["sigmoid"][i])
            if result["truncated"][i + 1]:
                row["truncated"] = True
            rows.append(row)
        return {"model": s.model.name, "query_truncated": result["truncated"][0], "results": rows}

    @app.post("/v1/classify", tags=["classification"], dependencies=[auth])
    async def classify(body: ClassifyRequest, request: Request):
        s = service(request)
        scores, probs = await s.classify([Input("image", i) for i in body.images], body.labels, body.templates)
        top = min(body.top_k, len(body.labels))
        results = []
        for i in range(len(body.images)):
            order = sorted(range(len(body.labels)), key=lambda c: -probs[i][c])[:top]
            results.append({"index": i, "labels": [{"label": body.labels[c], "probability": float(probs[i][c]),
                                                    "score": float(scores[i][c])} for c in order]})
        return {"model": s.model.name, "results": results}


def _hits_response(hits, truncated: bool) -> Response:
    results = [{"score": hit.score, "key": hit.key, "row": row, "thumbnail": f"/v1/thumbnails/{row}",
                "metadata": {k: v for k, v in hit.metadata.items() if k != "key"}} for hit, row in hits]
    return _json({"results": results, "query_truncated": truncated})


def _add_search_routes(app: FastAPI, auth) -> None:
    @app.post("/v1/search", tags=["search"], dependencies=[auth])
    async def search(body: SearchRequest, request: Request):
        s = service(request)
        vector = body.vector
        if body.like is not None:
            if body.query is not None or body.vector is not None:
                raise InputError("give one of query, vector, like")
            if s.index is None:
                raise InputError(NO_INDEX, 404)
            if body.like >= len(s.index):
                raise InputError(f"like={body.like}: no such indexed image", 404)
            vector = s.index.vectors([body.like])[0].tolist()
        query = None if body.query is None else _input(body.query)
        hits, truncated = await s.search(query, vector, body.k, body.prefix, body.where)
        return _hits_response(hits, truncated)

    @app.post("/v1/search/upload", tags=["search"], dependencies=[auth])
    async def search_upload(request: Request, file: UploadFile = File(...), k: int = Form(10, ge=1, le=1000)):
        s = service(request)
        hits, _ = await s.search(Input("image", await file.read()), None, k, None, None)
        return _hits_response(hits, False)

    @app.get("/v1/thumbnails/{row}", tags=["search"], dependencies=[auth])
    async def thumbnail(row: int, request: Request):
        from starlette.concurrency import run_in_threadpool

        s = service(request)
        if s.thumbnails is None:
            raise InputError(NO_INDEX, 404)
        data = await run_in_threadpool(s.thumbnails.get, row)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def _plain(value: Any):
    """JSON for numpy scalars in metadata."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
