"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import EngineDep, SettingsDep
from service.api.errors import ErrorJSONResponse, error_response, responses
from service.api.schemas import Status

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Status)
async def healthz() -> Status:
    """Liveness: the process is up and its event loop answers."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses=responses(guarded=False))
async def readyz(engine: EngineDep) -> Status | ErrorJSONResponse:
    """Readiness: 200 once the model is loaded and warm; 503 before that, while draining (from SIGTERM on), and
    while the state store (Redis) cannot be reached."""
    if engine.draining:
        return error_response(503, "draining", "the server is shutting down", headers={"Retry-After": "1"})
    if not engine.ready:
        return error_response(503, "not_ready", "the model is not loaded and warm yet", headers={"Retry-After": "1"})
    if not engine.store_available:
        return error_response(
            503, "state_store_unavailable", "the session state store cannot be reached", headers={"Retry-After": "1"}
        )
    return Status(status="ready")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}},
)
async def metrics(engine: EngineDep, settings: SettingsDep) -> Response:
    """Prometheus metrics (all prefixed lstm_serve_); 404 here when metrics_port serves them on a port of their own."""
    if settings.metrics_port is not None:
        return error_response(404, "not_found", f"metrics are served on port {settings.metrics_port}")
    return Response(engine.metrics.render(), media_type=CONTENT_TYPE_LATEST)
