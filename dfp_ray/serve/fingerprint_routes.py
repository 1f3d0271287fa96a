"""The model-fingerprint endpoints: ``POST /generate_fingerprint`` and ``POST /outlier_detection``.

Field names are the original service's (REFERENCE B), so its notebook client works unchanged
but for the URL; ``activation_mappings`` (its documented spelling) is accepted for
``activation_mapping``. Both accept ``?async=true`` (202 + job id, see :mod:`.jobs_routes`).
The work itself is in :mod:`.fingerprint_service`.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import Response

from .app import AppState
from .fingerprint_service import (
    GENERATE_SPEC,
    OUTLIER_SPEC,
    FingerprintService,
    GenerateForm,
    OutlierDetectionResult,
    OutlierForm,
)
from .form_endpoints import ERROR_RESPONSES, JobAccepted, multipart_openapi, run_form

ASYNC_HELP = "answer 202 with a job id at once and run in the background (poll GET /jobs/{job_id})"


def register(app: FastAPI, state: AppState) -> None:
    service = FingerprintService(state.cfg.fingerprint)
    state.services["fingerprint"] = service
    state.jobs.register("generate_fingerprint", service.generate)
    state.jobs.register("outlier_detection", service.detect)
    router = APIRouter(tags=["fingerprint"])

    @router.post(
        "/generate_fingerprint",
        summary="create a fingerprint of a model (or of raw data) from its training data",
        description=(
            "Multipart fields as in the original service: `dataset` (required), `model`, `model_type`, `model_def`, "
            "`partial_activations`; plus optional creation settings. Answers the fingerprint zip. A layered "
            "fingerprint covers every Keras layer but the output (8 for the original notebook's CNN); see "
            "docs/fingerprint.md."
        ),
        responses={200: {"content": {"application/zip": {}}, "description": "the fingerprint zip"},
                   202: {"model": JobAccepted, "description": "with ?async=true"}, **ERROR_RESPONSES},
        response_class=Response,
        openapi_extra=multipart_openapi(GENERATE_SPEC, GenerateForm),
    )
    async def generate_fingerprint(
        request: Request, run_async: bool = Query(False, alias="async", description=ASYNC_HELP)
    ) -> Response:
        return await run_form(state, request, spec=GENERATE_SPEC, form=GenerateForm, kind="generate_fingerprint",
                              handler=service.generate, precheck=service.precheck, run_async=run_async)

    @router.post(
        "/outlier_detection",
        summary="score data against a fingerprint: the percentage of samples deemed outliers",
        description=(
            "Multipart fields as in the original service: `fingerprint`, `dataset` (required), `num_layers` (checked "
            "when given), `model`, `model_type`, `model_def`, `activation_mapping` (alias `activation_mappings`), "
            "`percentile`. Answers `{\"score\": ...}` plus per-sample flags and scores, per-layer scores and the "
            "threshold used."
        ),
        responses={200: {"model": OutlierDetectionResult, "description": "the scores"},
                   202: {"model": JobAccepted, "description": "with ?async=true"}, **ERROR_RESPONSES},
        response_class=Response,
        openapi_extra=multipart_openapi(OUTLIER_SPEC, OutlierForm),
    )
    async def outlier_detection(
        request: Request, run_async: bool = Query(False, alias="async", description=ASYNC_HELP)
    ) -> Response:
        return await run_form(state, request, spec=OUTLIER_SPEC, form=OutlierForm, kind="outlier_detection",
                              handler=service.detect, precheck=service.precheck, run_async=run_async)

    app.include_router(router)
