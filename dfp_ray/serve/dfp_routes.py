"""The per-user DFP scoring endpoints.

* ``POST /dfp/{source}/score`` - a JSON array of raw records of ``source`` (as the vendor
  writes them: Duo authlogs, Azure AD sign-ins, or any YAML-declared schema) -> one answer per
  record, in order: its scores or its own error.
* ``GET /dfp/{source}/models/{user}`` - which model and version would score ``user``, and why.
* ``GET /dfp/{source}/stats`` - what the scorer replica holds (users, models, loads).
* ``GET /dfp`` - the configured sources.

The work is in :mod:`.dfp_ingress` (mapping, coalescing, routing to the scorer) and
:mod:`.dfp_scoring` (the pipeline's steps). See docs/serve.md, "Per-user DFP scoring".
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from .app import AppState
from .dfp_ingress import DfpIngress, HandleBackend, LocalBackend, ScorerUnavailableError
from .dfp_scorer import freeze_heap
from .dfp_scoring import gc_paused
from .errors import ApiError, ErrorBody

ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 403, 404, 413, 415, 422, 503)}


class TopFeature(BaseModel):
    feature: str = Field(description="a model feature")
    z: float | None = Field(description="its z-score (|loss - training mean| / training std)")
    value: Any = Field(None, description="the record's value of the feature (after the schema's mapping)")
    expected: Any = Field(None, description="what the model reconstructed (most likely category, number)")


class RecordError(BaseModel):
    code: str = Field(description="invalid_record, no_model or scoring_failed")
    detail: str = Field(description="what was wrong and what to do")
    field: str | None = Field(None, description="the raw field at fault, when one is")


class RecordResult(BaseModel):
    """One record's answer: its scores, or its ``error`` (then only index/event_id/user are set)."""

    index: int = Field(description="position of the record in the request")
    event_id: str | None = Field(description="the schema's event id column (Duo txid, Azure properties.id)")
    user: str | None = None
    timestamp: str | None = Field(None, description="event time, ISO-8601 UTC")
    model: str | None = Field(None, description="the model that scored it, name:version")
    scored_by: str | None = Field(None, description="the user whose model it is, or generic_user")
    z_scores: dict[str, float | None] = Field(default_factory=dict, description="per-feature z-scores")
    counters: dict[str, int | None] = Field(default_factory=dict, description="the per-user-per-day counters data "
                                            "prep computed for the record (logcount, locincrement, ...)")
    mean_abs_z: float | None = None
    max_abs_z: float | None = None
    detection: bool | None = Field(None, description="the pipeline's detection rule (filter_detections) at its threshold")
    threshold: float | None = Field(None, description="the threshold the rule used")
    score_column: str | None = Field(None, description="the score the threshold applies to")
    top_features: list[TopFeature] = Field(default_factory=list, description="the features that drove the score, "
                                           "largest z first")
    error: RecordError | None = None


class ScoreAnswer(BaseModel):
    source: str
    records: int
    scored: int
    errors: int = Field(description="records answered with an error (the others are scored)")
    detections: int
    results: list[RecordResult]


class ModelInfo(BaseModel):
    source: str
    user: str
    model: str = Field(description="name:version of the model that would score the user")
    name: str
    version: str
    own_model: bool = Field(description="true: the user's own model; false: the generic fallback")
    scored_by: str
    reason: str
    user_model_name: str = Field(description="the registered name looked up for the user")
    generic_model_name: str
    replica: str = Field(description="the scorer replica holding the user")
    history_rows: int = Field(description="same-day records of the user that replica holds")
    refresh_s: float
    checked_s_ago: float = Field(description="seconds since the registry was last checked for this user")


BODY_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {
            "type": "array", "items": {"type": "object"},
            "description": "raw log records of the source, e.g. Duo authentication log records",
        }}},
    }
}


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, "too_large", f"the body has {int(length)} bytes; at most {limit} are accepted "
                       "(dfp.max_body_bytes): send fewer records per request", "body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"the body is over {limit} bytes (dfp.max_body_bytes): send fewer "
                           "records per request", "body")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes) -> Any:
    """The body as JSON: orjson, else Python's json (which also reads NaN, Infinity and integers
    beyond 64 bits, as Python writers emit them); neither: 400."""
    try:
        with gc_paused():  # a dict per record, no cycles: no collections while decoding (see gc_paused)
            return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        first = exc
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        reason = first if isinstance(exc, RecursionError) else exc
        raise ApiError(400, "invalid_json", f"the body is not valid JSON ({str(reason)[:200]}); send a JSON array "
                       "of records", "body") from None


def register(app: FastAPI, state: AppState) -> None:
    service = state.cfg.dfp
    handle = state.handles.get("dfp_scorer")
    backend = (HandleBackend(handle, bundled=service.scorer.num_replicas == 1) if handle is not None
               else LocalBackend(service))
    ingress = DfpIngress(service, backend)
    state.services["dfp"] = ingress
    router = APIRouter(tags=["dfp"])

    def known(source: str) -> None:
        if source not in service.sources:
            names = ingress.sources
            hint = (f"known sources: {names}" if names else
                    "no source is configured: add one under dfp.sources in the serve config")
            raise ApiError(404, "unknown_source", f"unknown source {source!r}; {hint}", "source")

    @router.get("/dfp", summary="the configured DFP sources")
    async def sources() -> dict[str, Any]:
        return {"sources": ingress.sources}

    @router.post(
        "/dfp/{source}/score",
        summary="score raw log records with each user's model (generic fallback)",
        description=(
            "Body: a JSON array of raw records of the source, as its vendor writes them. Answer: one result per "
            "record, in order: per-feature z-scores, `mean_abs_z`, `max_abs_z`, the pipeline's detection decision at "
            "its configured threshold, the top features, the model (`name:version`); or that record's `error` (the "
            "others are still scored). Per-user-per-day counters count the records this request carries plus the "
            "user's earlier same-day records the scorer holding the user has seen; see docs/serve.md."
        ),
        responses={200: {"model": ScoreAnswer}, **ERRORS},
        response_class=Response,
        openapi_extra=BODY_OPENAPI,
    )
    async def score(source: str, request: Request) -> Response:
        known(source)
        body = await _read_body(request, service.max_body_bytes)
        if not body.strip():
            raise ApiError(422, "missing_field", "the body is empty: send a JSON array of records", "body")
        records = _parse(body)
        if not isinstance(records, list):
            hint = " (wrap a single record in [ ])" if isinstance(records, dict) else ""
            raise ApiError(422, "invalid_field", f"the body must be a JSON array of records, got "
                           f"{type(records).__name__}{hint}", "body")
        if len(records) > service.max_records_per_request:
            raise ApiError(413, "too_large", f"{len(records)} records in one request; at most "
                           f"{service.max_records_per_request} (dfp.max_records_per_request): split the request",
                           "body")
        try:
            answer = await ingress.score_request(source, records)
        except ScorerUnavailableError as exc:
            raise ApiError(503, "unavailable", f"{exc}; retry shortly", None, {"Retry-After": "2"}) from None
        return _json(answer)

    @router.get(
        "/dfp/{source}/models/{user:path}",
        summary="which model and version would score this user (own or generic), and why",
        responses={200: {"model": ModelInfo}, **ERRORS},
        response_class=Response,
    )
    async def model_for(source: str, user: str) -> Response:
        known(source)
        if not user:
            raise ApiError(422, "missing_field", "give a user name: /dfp/{source}/models/{user}", "user")
        try:
            info = await ingress.describe(source, user)
        except Exception as exc:  # noqa: BLE001 - the registry or the scorer is down
            raise ApiError(503, "unavailable", f"could not resolve the model of {user!r}: {type(exc).__name__}: "
                           f"{exc}; retry shortly", "user", {"Retry-After": "2"}) from None
        if info.get("model") is None:
            raise ApiError(404, "no_model", info["reason"], "user")
        return _json(info)

    @router.get("/dfp/{source}/stats", summary="what the scorer replica holds: users, loaded models, loads",
                responses=ERRORS)
    async def stats(source: str) -> dict[str, Any]:
        known(source)
        try:
            return await ingress.stats(source)
        except Exception as exc:  # noqa: BLE001
            raise ApiError(503, "unavailable", f"the scorer did not answer: {type(exc).__name__}: {exc}", None,
                           {"Retry-After": "2"}) from None

    app.include_router(router)
    if service.sources:
        for source in service.sources:  # the mapping side of each source (schema, pipeline config) now
            ingress.runtime(source)
            if service.scorer.in_ingress and isinstance(backend, LocalBackend):  # and the scoring side
                backend.scorer.runtime(source).warm_up()
        freeze_heap()
