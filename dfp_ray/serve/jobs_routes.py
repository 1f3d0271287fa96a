"""``GET /jobs/{job_id}`` and ``GET /jobs/{job_id}/result``: polling asynchronous jobs.

Any replica answers for any job (state lives in the shared jobs folder). A poll of a job
whose owner stopped heartbeating triggers its takeover (or declares it lost) right away,
so a client never waits on a job nobody runs.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Path
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from .app import AppState
from .errors import ApiError, ErrorBody
from .jobs import JobRecord, iso


class JobStatus(BaseModel):
    """State and progress of an asynchronous job."""

    job_id: str
    kind: str
    state: str = Field(description="queued, running, done, failed or lost")
    stage: str = Field(description="what it is doing now")
    progress: float = Field(description="0..1")
    attempts: int = Field(description="times it was started (a replica restart costs one)")
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    heartbeat_at: str | None
    error: dict[str, Any] | None = Field(None, description="for failed or lost jobs: the error body and its status")
    history: list[str] = Field(description="takeovers by other replicas, with reasons")


def _status(record: JobRecord) -> JobStatus:
    error = None if record.error is None else {**record.error, "status": record.error_status}
    return JobStatus(
        job_id=record.job_id, kind=record.kind, state=record.state, stage=record.stage, progress=record.progress,
        attempts=record.attempts, created_at=iso(record.created_at), started_at=iso(record.started_at),
        finished_at=iso(record.finished_at), heartbeat_at=iso(record.heartbeat_at), error=error,
        history=record.history,
    )


def register(app: FastAPI, state: AppState) -> None:
    router = APIRouter(tags=["jobs"])
    job_id_param = Path(description="the job_id a ?async=true request answered", max_length=64)

    @router.get("/jobs/{job_id}", name="job_status", response_model=JobStatus,
                responses={404: {"model": ErrorBody, "description": "no such job"}},
                summary="state and progress of an asynchronous job")
    async def job_status(job_id: str = job_id_param) -> JobStatus:
        return _status(state.jobs.status(job_id))

    @router.get("/jobs/{job_id}/result", name="job_result",
                responses={200: {"description": "the answer the synchronous request would have given"},
                           404: {"model": ErrorBody, "description": "no such job"},
                           409: {"model": ErrorBody, "description": "not finished yet (see Retry-After)"},
                           410: {"model": ErrorBody, "description": "the job was lost; submit it again"}},
                summary="the result of a finished job (or its error, with the status the request would have had)")
    async def job_result(job_id: str = job_id_param) -> Response:
        record = state.jobs.status(job_id)
        if record.state in ("queued", "running"):
            raise ApiError(409, "not_ready", f"job {job_id} is {record.state} ({record.stage}, "
                           f"{100 * record.progress:.0f}%); poll /jobs/{job_id} and fetch the result when it is done",
                           "job_id", headers={"Retry-After": "2"})
        if record.state != "done":
            body = record.error or {"detail": f"job {job_id} {record.state}", "field": None, "code": record.state}
            return JSONResponse(body, status_code=record.error_status or 410)
        path = state.jobs.store.result_path(job_id)
        if not path.is_file():
            raise ApiError(410, "job_lost", f"the result of job {job_id} is gone; submit it again", "job_id")
        media = record.result_media_type or "application/octet-stream"
        if media == "application/json":
            return Response(path.read_bytes(), media_type=media, headers=record.result_headers)
        return FileResponse(path, media_type=media, filename=record.result_filename, headers=record.result_headers)

    app.include_router(router)
