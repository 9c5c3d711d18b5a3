"""The hot metrics' updates wait in a deque and are applied before every collection: whatever reads the registry
sees every update made before it, from any thread, and nothing waits without bound."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service import metrics as metrics_module
from service.metrics import Metrics, ModelMetrics

QUEUE_WAIT_COUNT = "lstm_serve_queue_wait_seconds_count"


def test_an_update_waits_until_the_registry_is_read() -> None:
    metrics = Metrics()
    metrics.queue_wait.observe(0.001)
    metrics.tokens.labels("prompt").inc(3)
    metrics.observe_request("/v1/sessions/{id}/predict", "POST", 200, 0.0005, ("m", "1"))
    assert len(metrics.pending) == 5
    registry = metrics.registry
    assert registry.get_sample_value(QUEUE_WAIT_COUNT) == 1.0  # the collection applied them first
    assert len(metrics.pending) == 0
    assert registry.get_sample_value("lstm_serve_tokens_total", {"kind": "prompt"}) == 3.0
    labels = {"route": "/v1/sessions/{id}/predict", "method": "POST", "status": "200"}
    assert registry.get_sample_value("lstm_serve_requests_total", labels) == 1.0
    model = {"model": "m", "version": "1", "route": "/v1/sessions/{id}/predict", "status": "200"}
    assert registry.get_sample_value("lstm_serve_model_requests_total", model) == 1.0
    assert b"lstm_serve_request_latency_seconds_count" in metrics.render()


def test_a_versions_share_waits_with_the_total() -> None:
    base = Metrics()
    own = ModelMetrics(base, "m", "1")
    own.batch_size.observe(4)
    own.tokens.labels("generated").inc(2)
    registry = base.registry
    assert registry.get_sample_value("lstm_serve_batch_size_count") == 1.0
    assert registry.get_sample_value("lstm_serve_model_batch_size_count", {"model": "m", "version": "1"}) == 1.0
    labels = {"model": "m", "version": "1", "kind": "generated"}
    assert registry.get_sample_value("lstm_serve_model_tokens_total", labels) == 2.0


def test_updates_from_many_threads_all_land_while_another_applies() -> None:
    metrics = Metrics()
    counter = metrics.tokens.labels("generated")
    stop = threading.Event()

    def apply() -> None:
        while not stop.is_set():
            metrics.pending.apply()

    def update() -> None:
        for _ in range(20_000):
            counter.inc()

    applier = threading.Thread(target=apply)
    applier.start()
    writers = [threading.Thread(target=update) for _ in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    applier.join()
    assert metrics.registry.get_sample_value("lstm_serve_tokens_total", {"kind": "generated"}) == 80_000.0


def test_nothing_waits_without_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "MAX_PENDING", 10)
    metrics = Metrics()
    for _ in range(10):
        metrics.batch_size.observe(1)
    assert len(metrics.pending) == 10
    metrics.batch_size.observe(1)  # past the bound: this update applies what waits
    assert len(metrics.pending) == 0
    assert metrics.registry.get_sample_value("lstm_serve_batch_size_count") == 11.0


async def test_the_app_applies_them_every_interval_and_as_it_stops() -> None:
    metrics = Metrics()
    task = asyncio.get_running_loop().create_task(metrics.keep_applied(every_s=0.01))
    metrics.inference_latency.observe(0.0002)
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not len(metrics.pending):
            break
    assert len(metrics.pending) == 0  # applied by the task, not by a collection
    metrics.inference_cpu.inc(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(metrics.pending) == 0  # what waited when it stopped was applied
    assert metrics.registry.get_sample_value("lstm_serve_inference_cpu_seconds_total") == 0.5


def test_a_read_through_the_metric_sees_every_update() -> None:
    metrics = Metrics()
    metrics.batch_size.observe(8)
    assert metrics.batch_size._sum.get() == 8.0  # applied before the read
    assert len(metrics.pending) == 0
