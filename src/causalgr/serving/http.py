"""The HTTP front of a `Ranker` (docs/design.md §6): FastAPI routes, request limits, metrics.

    POST /v1/rank                  rank candidates after a history (and/or a user's cached events)
    POST /v1/users/{user}/events   append events to a user's cached history
    GET  /healthz                  liveness
    GET  /v1/model                 what is served: formulation, backbone, tasks, limits
    GET  /metrics                  Prometheus text: requests, latency, cache size

Ids are the source's original ids. A bad request gets a 4xx whose `detail` locates the field
(FastAPI's shape) and whose `message` says it in one line. The model runs in a worker thread,
never on the event loop; an unexpected error is a 500 for that request only.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import asdict
from typing import Union

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException

from causalgr.serving.history import InvalidInput
from causalgr.serving.limits import Limits
from causalgr.serving.metrics import ServerMetrics
from causalgr.serving.ranker import Ranker

M_ARENA_MAX = -8  # glibc's mallopt parameter
ItemId = Union[StrictInt, str]  # the source's ids; ints are read as the same id written as a string


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item: ItemId
    timestamp: int = Field(ge=0, description="seconds; events oldest first")
    actions: dict[str, int] = Field(default_factory=dict, description="task → 0 or 1; a task left out is 0")
    action_value: int = Field(0, ge=0, description="categorical action value (e.g. a rating); 0 = none")


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: ItemId | None = Field(None, description="rank after this user's cached events (then `history`)")
    history: list[Event] = Field(default_factory=list)
    candidates: list[ItemId] = Field(min_length=1)
    timestamp: int = Field(ge=0, description="seconds; not before the last history event")


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1)


# Where each ranker argument sits in a request body, for error locations.
_EVENT_FIELDS = {"items": "item", "timestamps": "timestamp", "labels": "actions", "action_values": "action_value"}


def create_app(ranker: Ranker, limits: Limits = Limits()) -> FastAPI:
    """The FastAPI app serving `ranker` under `limits`."""
    _one_malloc_arena()
    app = FastAPI(title="causalgr ranker", version="1")
    metrics = ServerMetrics(ranker)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(Measured, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error_response(422, _json_safe(list(err.errors())))

    @app.exception_handler(StarletteHTTPException)  # ours, and the router's 404 / 405
    async def refused(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error_response(err.status_code, err.detail)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model")
    def model_info() -> dict:
        config = ranker.config
        return {
            "run": None if ranker.run is None else str(ranker.run),
            "formulation": config.formulation, "backbone": config.backbone, "tasks": list(config.tasks),
            "num_items": config.num_items, "num_action_values": config.num_action_values,
            "max_len": config.max_len, "max_history": ranker.max_history, "limits": asdict(limits),
        }

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/v1/rank", openapi_extra=_body_schema(RankRequest))
    async def rank(request: Request) -> Response:
        body = await _parsed(request, RankRequest)
        _check_count(["body", "candidates"], len(body.candidates), limits.max_candidates, "candidates")
        _check_count(["body", "history"], len(body.history), limits.max_history_events, "history events")
        try:
            result = await run_in_threadpool(
                metrics.timed(_route(request.scope), ranker.rank_with_details), **_event_arrays(body.history, ranker.tasks, "history"),
                user=body.user, candidates=body.candidates, timestamp=body.timestamp,
            )
        except InvalidInput as err:
            raise _unprocessable(_location(err, "history"), err.message) from None
        rows = result.probabilities.tolist()
        return Response(to_json({  # sent as it is: no second pass of FastAPI's encoder over K rows
            "candidates": [{"item": c, "probabilities": dict(zip(ranker.tasks, p))} for c, p in zip(body.candidates, rows)],
            "unknown_items": result.unknown_items,
        }), media_type="application/json")

    @app.post("/v1/users/{user}/events", openapi_extra=_body_schema(EventsRequest))
    async def observe(user: str, request: Request) -> dict:
        body = await _parsed(request, EventsRequest)
        _check_count(["body", "events"], len(body.events), limits.max_history_events, "events")
        try:
            unknown = await run_in_threadpool(metrics.timed(_route(request.scope), ranker.observe), user,
                                              **_event_arrays(body.events, ranker.tasks, "events"))
        except InvalidInput as err:
            raise _unprocessable(["path", "user"] if err.field == "user" else _location(err, "events"), err.message) from None
        return {"user": user, "unknown_items": unknown}

    return app


def _route(scope: dict) -> str:
    """A request's metrics label: the matched route's path ("/v1/users/{user}/events", not the
    user's), set on the scope by the router; "unmatched" when no route matched."""
    route = scope.get("route")
    return route.path if route is not None else "unmatched"


def _one_malloc_arena() -> None:
    """Where glibc's malloc is the allocator, let every thread share the main arena: in an arena of
    its own, a worker thread gets fresh pages (page faults) for a call's large tensors each time,
    while the main arena's adaptive mmap threshold keeps reusing them; the model runs in worker
    threads. Takes effect only before a thread has made its own arena (here: before the server's
    threads start); elsewhere nothing changes."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1)
    except (OSError, AttributeError):  # not glibc
        pass


async def _parsed(request: Request, model: type[BaseModel]) -> BaseModel:
    """The body validated as `model` straight from its JSON bytes (pydantic's parser, no dict of the
    whole body in between); otherwise a 422 in FastAPI's shape, each location under "body"."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as err:
        raise RequestValidationError([_under_body(e) for e in err.errors(include_url=False)]) from None


def _under_body(error: dict) -> dict:
    """A pydantic error located under "body"; malformed JSON's input (the whole body) not echoed."""
    if error["type"] == "json_invalid":
        return {k: v for k, v in error.items() if k != "input"} | {"loc": ("body",)}
    return {**error, "loc": ("body", *error["loc"])}


def _body_schema(model: type[BaseModel]) -> dict:
    """The OpenAPI request body of a route that parses `model` itself (`_parsed`)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _event_arrays(events: list[Event], tasks: tuple[str, ...], where: str) -> dict:
    """The ranker's history arguments from request events; 422 for an action naming no task."""
    named = set().union(*(e.actions for e in events))
    if not named.issubset(tasks):  # only then find the first event at fault
        n, task = next((n, task) for n, e in enumerate(events) for task in e.actions if task not in tasks)
        raise _unprocessable(["body", where, n, "actions", task], f"unknown task; the model's tasks are {', '.join(tasks)}")
    labels = np.zeros((len(events), len(tasks)), dtype=np.float32)
    for t, task in enumerate(tasks):  # a column at a time: a list per task, not a list per event
        labels[:, t] = [e.actions.get(task, 0) for e in events]
    return dict(items=[e.item for e in events], timestamps=[e.timestamp for e in events],
                labels=labels, action_values=[e.action_value for e in events])


def _location(err: InvalidInput, events: str) -> list:
    if err.field in _EVENT_FIELDS:
        return ["body", events] + ([] if err.index is None else [err.index, _EVENT_FIELDS[err.field]])
    return ["body", err.field] + ([] if err.index is None else [err.index])


def _check_count(loc: list, count: int, limit: int, what: str) -> None:
    if count > limit:
        raise _unprocessable(loc, f"at most {limit:,} {what} per request, got {count:,}")


def _unprocessable(loc: list, message: str) -> HTTPException:
    """A 422 in FastAPI's validation-error shape: `detail` = [{loc, msg, type}]."""
    return HTTPException(422, detail=[{"type": "value_error", "loc": loc, "msg": message}])


def _error_response(status: int, detail: object) -> JSONResponse:
    """`detail` as FastAPI gives it, plus `message`: the first problem in one line, naming its field."""
    if isinstance(detail, list) and detail:
        message = f"{'.'.join(str(part) for part in detail[0]['loc'])}: {detail[0]['msg']}"
    else:
        message = str(detail)
    return JSONResponse({"detail": detail, "message": message}, status_code=status)


def _json_safe(errors: list[dict]) -> list[dict]:
    # pydantic puts the exception object itself in `ctx`; the client needs the text.
    return [{k: (v if k != "ctx" else {c: str(x) for c, x in v.items()}) for k, v in e.items()} for e in errors]


class Measured:
    """ASGI middleware: each request's route, status and latency into `metrics` (a 500 if the app raised)."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def sent(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            self.metrics.observe(_route(scope), status, time.perf_counter() - start)


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by Content-Length or by counting what arrives."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _error_response(413, self._message())(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, detail=self._message())  # FastAPI turns it into the response
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"request body larger than {self.max_bytes:,} bytes"
