"""Multipart endpoints that run a job handler, synchronously or as an ``?async=true`` job.

Shared by every service whose requests are uploads plus a few fields: the upload is
streamed to bounded storage (:mod:`.uploads`), the text fields are validated by a pydantic
model, a cheap pre-check refuses what needs no loading (uploaded code, for one), and then
the handler runs in a worker thread (so the replica keeps answering ``/healthz`` and job
polls) or is queued as a job that answers 202.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from .app import AppState
from .errors import ApiError, ErrorBody, from_validation_error
from .jobs import Handler
from .uploads import FormSpec


class JobAccepted(BaseModel):
    """202 answer of an ``?async=true`` request."""

    job_id: str
    state: str = Field(description="queued")
    status_url: str = Field(description="GET it for state and progress")
    result_url: str = Field(description="GET it when state is done")


def multipart_openapi(spec: FormSpec, form: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting the multipart body (the route parses it itself)."""
    schema = form.model_json_schema()
    properties: dict[str, Any] = {
        name: {"type": "string", "format": "binary", "description": help_} for name, help_ in spec.files.items()
    }
    properties.update(schema.get("properties", {}))
    for alias, target in spec.aliases.items():
        properties[alias] = {**properties.get(target, {}), "description": f"alias of {target}"}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": {
                "type": "object", "properties": properties, "required": list(spec.required_files),
            }}},
        }
    }


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "unreadable or refused input", 401: "token missing", 403: "token wrong, or uploaded code not allowed",
        413: "body too large", 415: "not multipart/form-data", 422: "invalid field, or options that contradict the "
        "fingerprint", 503: "upload storage busy",
    }.items()
}


def validate_fields(form: type[BaseModel], fields: dict[str, str]) -> dict[str, Any]:
    """Text fields -> validated, JSON-ready params (stored as is in a job's record); 422 naming the first bad one."""
    try:
        return form.model_validate(fields).model_dump(mode="json")
    except ValidationError as exc:
        raise from_validation_error(exc) from None


async def run_form(
    state: AppState,
    request: Request,
    *,
    spec: FormSpec,
    form: type[BaseModel],
    kind: str,
    handler: Handler,
    precheck: Callable[[dict[str, Any], dict[str, Path]], None],
    run_async: bool,
) -> Response:
    """Receive, validate and run one multipart request (see the module docstring)."""
    async with state.uploads.receive(request, spec) as upload:
        params = validate_fields(form, upload.fields)
        precheck(params, upload.files)
        if run_async:
            record = state.jobs.submit(kind, params, upload.folder)
            status_url = str(request.url_for("job_status", job_id=record.job_id))
            accepted = JobAccepted(job_id=record.job_id, state=record.state, status_url=status_url,
                                   result_url=str(request.url_for("job_result", job_id=record.job_id)))
            return JSONResponse(accepted.model_dump(), status_code=202, headers={"Location": status_url})
        out = await run_in_threadpool(handler, params, upload.folder, _no_progress)
    headers = {**out.headers}
    if out.media_type != "application/json":
        headers["Content-Disposition"] = f'attachment; filename="{out.filename}"'
    return Response(out.data, media_type=out.media_type, headers=headers)


def _no_progress(_stage: str, _fraction: float) -> None:
    return None


__all__ = ["ERROR_RESPONSES", "ApiError", "JobAccepted", "multipart_openapi", "run_form"]
