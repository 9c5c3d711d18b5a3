"""Schemathesis against the service's own OpenAPI document, in process (the ASGI app on a tiny model): every
operation with valid and invalid inputs, then stateful scenarios that follow links from a created session to every
route that takes its id. Checks: no 5xx, status codes, content types and bodies as the document declares them,
and every error in the service's shape, {"error": {"code", "message"}} (on /v2 the protocol's {"error": "..."}).

Bounded and reproducible: few examples per operation, derandomized Hypothesis, no deadline, no example database.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from service.app import create_app
from service.config import Settings

EXAMPLES_PER_OPERATION = 25
SCENARIOS = 30
STEPS_PER_SCENARIO = 6
FUZZ = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

SESSION = "/v1/sessions/{id}"
# Every operation that takes a session id, by its label; links lead to each from a new session and from a fork.
SESSION_ROUTES = [
    f"POST {SESSION}/predict",
    f"GET {SESSION}",
    f"DELETE {SESSION}",
    f"POST {SESSION}/reset",
    f"POST {SESSION}/fork",
    f"GET {SESSION}/state",
    f"POST {SESSION}/generate",
    f"POST {SESSION}/inspect",
]
# The V2 infer routes read the raw body (JSON, or JSON then binary tensors), so the document declares no body;
# this describes the JSON form so that the fuzzer sends one.
V2_INFER_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "sequence_id": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]},
                            "sequence_start": {"type": "boolean"},
                            "sequence_end": {"type": "boolean"},
                        },
                    },
                    "inputs": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 2,
                        "items": {
                            "type": "object",
                            "required": ["name", "datatype", "shape", "data"],
                            "properties": {
                                "name": {"enum": ["input_ids"]},
                                "datatype": {"enum": ["INT64", "FP32"]},
                                "shape": {
                                    "type": "array",
                                    "items": {"type": "integer", "minimum": 0, "maximum": 4},
                                    "maxItems": 3,
                                },
                                "data": {
                                    "type": "array",
                                    "maxItems": 8,
                                    "items": {"type": "integer", "minimum": -1, "maximum": 80},
                                },
                            },
                        },
                    },
                    "outputs": {
                        "type": "array",
                        "maxItems": 1,
                        "items": {
                            "type": "object",
                            "properties": {
                                "name": {"enum": ["logits"]},
                                "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
                            },
                        },
                    },
                },
            }
        }
    },
}


# The tiny model's name and version (tests/factories.py), for the V2 routes' path parameters.
SERVED_MODEL = {"name": "tiny-test-lstm", "version": "0"}


def bundled_operations() -> list[str]:
    """The document's operations, read from an app that is never started (the document needs no model)."""
    doc = create_app(Settings()).openapi()
    return [f"{method.upper()} {path}" for path, item in doc["paths"].items() for method in item]


OPERATIONS = bundled_operations()


def _operation(doc: dict[str, Any], label: str) -> dict[str, Any]:
    method, path = label.split(" ", 1)
    operation: dict[str, Any] = doc["paths"][path][method.lower()]
    return operation


def with_links(raw: dict[str, Any]) -> dict[str, Any]:
    """The document plus what a test needs and the app cannot declare: links from a session's creators to every
    route taking its id, from an exported state to a restore, and the V2 infer bodies."""
    doc = copy.deepcopy(raw)
    to_session = {
        label.replace(" ", "_"): {
            "operationId": _operation(doc, label)["operationId"],
            "parameters": {"path.id": "$response.body#/session_id"},
        }
        for label in SESSION_ROUTES
    }
    for creator in ("POST /v1/sessions", f"POST {SESSION}/fork"):
        _operation(doc, creator)["responses"]["201"]["links"] = dict(to_session)
    restore = {
        "operationId": _operation(doc, "POST /v1/sessions")["operationId"],
        "requestBody": {"state": "$response.body"},
    }
    _operation(doc, f"GET {SESSION}/state")["responses"]["200"]["links"] = {"restore": restore}
    for label in OPERATIONS:
        if label.endswith("/infer"):
            _operation(doc, label)["requestBody"] = V2_INFER_BODY
    return doc


def error_shape(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every error body has the service's shape; the V2 routes answer the protocol's, except for the 422 of a
    path parameter, which FastAPI validates before the route runs."""
    if response.status_code < 400:
        return None
    body = json.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    if case.operation.path.startswith("/v2") and response.status_code != 422:
        assert isinstance(body["error"], str) and body["error"], body
        return None
    error = body["error"]
    assert isinstance(error, dict) and set(error) <= {"code", "message", "details"}, body
    assert isinstance(error["code"], str) and isinstance(error["message"], str), body
    assert isinstance(error.get("details", {}), dict), body
    return None


CHECKS: list[Callable[..., bool | None]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    error_shape,
]


@pytest.fixture
def api_schema(tiny_model_path: Path) -> Iterator[OpenApiSchema]:
    """The document of a fresh app on the tiny model, loaded from the app itself, plus links.

    Loading it starts the app's lifespan; schemathesis's pytest plugin ends every lifespan when a test ends, and
    a drained engine stays drained, hence one app per test (a start costs a few tens of milliseconds).
    """
    settings_ = Settings(
        model_path=tiny_model_path,
        provider="cpu",
        max_batch_delay_ms=0.0,
        max_generate_tokens=8,
        max_inspect_length=16,
        max_text_length=256,
        max_sessions=100_000,
    )
    app = create_app(settings_)
    try:
        loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
        schema = schemathesis.openapi.from_dict(with_links(loaded.raw_schema))
        schema.app = app
        yield schema
    finally:
        shutdown_lifespans()  # drains the engine (the plugin does it too; a second call finds nothing left)


def test_the_fuzzed_document_is_the_apps(api_schema: OpenApiSchema) -> None:
    """The labels parametrizing the tests below are exactly the operations of the document served."""
    served = [f"{m.upper()} {p}" for p, item in api_schema.raw_schema["paths"].items() for m in item]
    assert served == OPERATIONS
    assert {"POST /v1/sessions", "POST /v2/models/{name}/infer", *SESSION_ROUTES} <= set(served)


@pytest.mark.parametrize("label", OPERATIONS)
def test_every_operation(api_schema: OpenApiSchema, label: str) -> None:
    method, path = label.split(" ", 1)
    operation = api_schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    served = {k: v for k, v in SERVED_MODEL.items() if "{" + k + "}" in path}
    if served:  # a random model name only ever meets "not served": a third of the cases name the served one
        cases = cases | operation.as_strategy(GenerationMode.POSITIVE, path_parameters=served)

    @FUZZ
    @given(case=cases)
    def fuzz(case: Case) -> None:
        response = case.call()
        case.validate_response(response, checks=CHECKS)

    fuzz()


def test_stateful_scenarios_follow_the_session_links(api_schema: OpenApiSchema) -> None:
    """Scenarios of up to STEPS_PER_SCENARIO calls chained by the links (create or fork, then use, export,
    restore, delete), every response checked; and the links must really carry ids, or this tests nothing."""
    reached: set[str] = set()

    class Scenarios(api_schema.as_state_machine()):  # type: ignore[misc]
        def validate_response(
            self, response: Response, case: Case, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(response, checks=CHECKS)
            if case.operation.label in SESSION_ROUTES and response.status_code < 300:
                reached.add(case.operation.label)  # a real session id reached it: the link worked

    Scenarios.run(
        settings=settings(
            max_examples=SCENARIOS,
            stateful_step_count=STEPS_PER_SCENARIO,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    assert len(reached) >= len(SESSION_ROUTES) // 2, f"links reached only {sorted(reached)}"
