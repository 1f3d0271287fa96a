"""One JSON error shape for every failure, and the mapping from library errors to status codes.

Every error answer has the body ``{"detail": <what happened and what to do>, "field": <the
form field or parameter at fault, or null>, "code": <stable machine-readable slug>}``
(FastAPI's own ``detail`` key is kept, so generic clients still show the message). A user
error is always a 4xx; a 500 means a bug in dfp_ray, answers only a generic message with an
``error_id``, and logs the traceback under that id.

Status codes: 400 unreadable or refused input, 401/403 auth, 403 also for uploaded model
code without ``allow_model_code``, 404 unknown route or job, 405 wrong method, 409 a job
result asked for too early, 410 a job that was lost, 413 body too large, 415 not multipart,
422 invalid field values and options that contradict the fingerprint, 503 upload storage
full.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """The body of every error response."""

    detail: str = Field(description="what went wrong and what to do about it")
    field: str | None = Field(None, description="the form field or parameter at fault")
    code: str = Field(description="stable slug: missing_field, invalid_field, unsafe_input, too_large, ...")


class ApiError(Exception):
    """Raised by route code; rendered as :class:`ErrorBody` with ``status``."""

    def __init__(
        self, status: int, code: str, detail: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return ErrorBody(detail=self.detail, field=self.field, code=self.code).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_fingerprint_error(exc: Exception, field: str | None) -> ApiError:
    """Map a :class:`dfp_ray.fingerprint.FingerprintError` to a 4xx, naming ``field`` unless the error knows better."""
    from dfp_ray.fingerprint import FingerprintMismatchError, UnsafeInputError

    where = getattr(exc, "field", None) or field
    if isinstance(exc, FingerprintMismatchError):
        return ApiError(422, "mismatch", str(exc), where)
    if isinstance(exc, UnsafeInputError):
        return ApiError(400, "unsafe_input", str(exc), where)
    return ApiError(400, "invalid_input", str(exc), where)


def from_validation_error(exc: ValidationError | RequestValidationError, hint: dict[str, str] | None = None) -> ApiError:
    """The first problem of a pydantic/FastAPI validation error, naming its field."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "value_error"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form")]
    field = loc[-1] if loc else None
    kind = first.get("type", "")
    if kind == "missing":
        code, msg = "missing_field", f"field {field!r} is required"
    elif kind == "extra_forbidden":
        code, msg = "unknown_field", f"unknown field {field!r}"
    else:
        code, msg = "invalid_field", f"field {field!r}: {first.get('msg', 'invalid value')}"
        if "input" in first and not isinstance(first["input"], dict | list | bytes):
            msg += f" (got {str(first['input'])[:80]!r})"
    if hint and field in hint:
        msg += f"; {hint[field]}"
    more = len(errors) - 1
    if more > 0:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ApiError(422, code, msg, field)


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                 409: "conflict", 410: "gone", 413: "too_large", 415: "unsupported_media_type", 422: "invalid_field",
                 503: "unavailable"}


def install_error_handlers(app: FastAPI) -> None:
    """Render ApiError, FastAPI validation errors, HTTP errors and bugs as :class:`ErrorBody`."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such endpoint; see /docs for the API"
        code = _STATUS_CODES.get(exc.status_code, "error")
        return ApiError(exc.status_code, code, detail, None, getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        log.exception("internal error %s on %s %s", error_id, request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error (a bug in dfp_ray, logged as {error_id}); please report it",
             "field": None, "code": "internal_error", "error_id": error_id},
            status_code=500,
        )
