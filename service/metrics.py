"""Every Prometheus metric of the server, defined in one place, registered in a per-app CollectorRegistry
(several apps in one test process must not clash in the global registry).

The metrics updated per request, per batch or per token (request counts and latency, batch sizes, queue waits,
ONNX Runtime's time, tokens, token latencies) are updated through `PendingUpdates`: an update is an (update, amount)
pair appended to a deque, applied to prometheus_client's objects before every collection (a scrape, a test reading
the registry) and every APPLY_S by the app (`Metrics.keep_applied`). prometheus_client takes a lock per value and
walks a histogram's buckets in Python on every update, about ten updates per predict between the event loop and the
engine thread. One session's predict p50 moved by 4-8 us (641 against 633 us over 7 alternating 6 s wrk runs, 628
against 624 over 5 of 8 s; a first version through a module-level deque measured 620 against 606). A scrape still
sees every update made before it (one that names the metrics it wants, `?name[]=`, skips the collector that applies
them and sees them within APPLY_S).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

PREFIX = "lstm_serve_"
# Sub-millisecond resolution: a single-token step of the bundled model takes well under a millisecond on CPU.
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REJECTION_REASONS = (
    "unauthorized",
    "rate_limited",
    "too_many_sessions",
    "too_many_streams",
    "payload_too_large",
    "text_too_long",
    "too_many_tokens",
    "request_timeout",
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
APPLY_S = 0.05  # how often the app applies the pending updates (Metrics.keep_applied)
MAX_PENDING = 65536  # past this, an update applies what waits itself: nothing grows without bound
# One request's children: its count, its latency, its count under the model version it worked on (if any).
_Series = tuple[Counter, Histogram, Counter | None]


class PendingUpdates:
    """Updates of the hot metrics waiting to be applied; a collector of the registry that yields nothing but applies
    them, registered before the metrics so that a collection applies them first. Appending and popping are atomic
    under the GIL: the engine threads and the event loop append, any thread may apply."""

    def __init__(self) -> None:
        self._queue: deque[tuple[Callable[[float], None], float]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def defer(self, metric: Any) -> Any:
        """`metric` (a Counter, Histogram or labelled child) with its updates waiting here."""
        return _Deferred(metric, self)

    def apply(self) -> None:
        pop = self._queue.popleft
        try:
            while True:
                update, amount = pop()
                update(amount)
        except IndexError:  # empty: everything appended before the call is applied
            pass

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        self.apply()
        return []


class _Deferred:
    """A metric, or a labelled child, whose `inc` (a Counter's) or `observe` (a Histogram's) waits in PendingUpdates:
    one Python call per update, the deque's append inlined here."""

    __slots__ = ("_metric", "_pending", "_queue", "_update")

    def __init__(self, metric: Any, pending: PendingUpdates) -> None:
        self._metric, self._pending, self._queue = metric, pending, pending._queue
        self._update: Any = getattr(metric, "observe", None) or getattr(metric, "inc", None)

    def inc(self, amount: float = 1) -> None:
        queue = self._queue
        queue.append((self._update, amount))
        if len(queue) > MAX_PENDING:
            self._pending.apply()

    observe = inc

    def labels(self, *values: str) -> _Deferred:
        return _Deferred(self._metric.labels(*values), self._pending)

    def __getattr__(self, name: str) -> Any:
        """Anything else is the metric's own, read after what waits is applied: a read sees every update."""
        self._pending.apply()
        return getattr(self._metric, name)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.pending = PendingUpdates()
        r.register(self.pending)  # type: ignore[arg-type]  # first: a collection applies the updates, then reads
        self.requests = Counter(
            PREFIX + "requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            PREFIX + "request_latency_seconds",
            "HTTP request latency by route template, in seconds.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_latency = Histogram(
            PREFIX + "inference_latency_seconds",
            "Duration of one ONNX Runtime run, in seconds.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_cpu = Counter(
            PREFIX + "inference_cpu_seconds",
            "CPU time of the thread running ONNX Runtime during its runs, in seconds. Against the sum of "
            "inference_latency_seconds (wall time): the difference is time the runs spent waiting for a core or, "
            "after the run, for the GIL.",
            registry=r,
        )
        self.batch_size = Histogram(
            PREFIX + "batch_size",
            "Work items (sessions or stateless requests) per batch.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            PREFIX + "queue_wait_seconds",
            "Time a request's work item waited in the batch queue before its batch started (a generation's "
            "steps after its prompt are scheduled by the engine itself and not counted).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            PREFIX + "tokens",
            "Tokens run through the model, by kind (prompt = fed by clients, generated).",
            ["kind"],
            registry=r,
        )
        self.active_sessions = Gauge(
            PREFIX + "active_sessions", "Sessions currently held by the state store.", registry=r
        )
        self.sessions_created = Counter(
            PREFIX + "sessions_created", "Sessions created (fresh, restored or forked).", registry=r
        )
        self.sessions_evicted = Counter(
            PREFIX + "sessions_evicted",
            "Sessions removed, by reason: ttl (idle too long), capacity (LRU "
            "eviction when full), deleted (by their client).",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            PREFIX + "model_info",
            "The loaded model (always 1): name, version, fingerprint, execution provider.",
            ["name", "version", "fingerprint", "provider"],
            registry=r,
        )
        self.ready = Gauge(
            PREFIX + "ready", "1 when the model is loaded and warm and the server not draining.", registry=r
        )
        self.time_to_first_token = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Generation: time from the request to its first generated token, in seconds.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            PREFIX + "inter_token_latency_seconds",
            "Generation: time between consecutive tokens of one stream, in seconds.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.streams_in_progress = Gauge(
            PREFIX + "streams_in_progress",
            "Generations running now (streamed or not, over HTTP or WebSocket).",
            registry=r,
        )
        self.rejections = Counter(
            PREFIX + "rejections",
            "Requests refused by a limit or access check, by reason (unauthorized, "
            "rate_limited, too_many_sessions, too_many_streams, payload_too_large, text_too_long, too_many_tokens, "
            "request_timeout).",
            ["reason"],
            registry=r,
        )
        # Per model version (a model repository): labels bounded by the versions loaded, never by client input.
        mv = ["model", "version"]
        self.model_ready = Gauge(
            PREFIX + "model_ready",
            "Per loaded model version: 1 loaded and warm, 0 loading, draining (unloaded, sessions left) or stopped.",
            mv,
            registry=r,
        )
        self.model_sessions = Gauge(
            PREFIX + "model_sessions", "Sessions held by each model version's state store.", mv, registry=r
        )
        self.model_sessions_created = Counter(
            PREFIX + "model_sessions_created", "Sessions created on each model version.", mv, registry=r
        )
        self.model_requests = Counter(
            PREFIX + "model_requests",
            "HTTP requests that worked on a model version, by version, route template and status code.",
            [*mv, "route", "status"],
            registry=r,
        )
        self.model_tokens = Counter(
            PREFIX + "model_tokens", "Tokens run through each model version, by kind.", [*mv, "kind"], registry=r
        )
        self.model_batch_size = Histogram(
            PREFIX + "model_batch_size",
            "Work items per batch of each model version (batches never mix versions).",
            mv,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_load_failures = Counter(
            PREFIX + "model_load_failures",
            "Model versions of the repository that failed to load (the server keeps serving the others).",
            mv,
            registry=r,
        )
        self.model_draining = Gauge(
            PREFIX + "model_draining",
            "1 while an unloaded model version still serves its sessions (freed when they end).",
            mv,
            registry=r,
        )
        self._request_series: dict[tuple[str, str, int, tuple[str, str] | None], _Series] = {}
        # The hot ones (see the module's docstring): every update goes through `pending`. The objects registered
        # stay as they are; these attributes are what the server updates.
        defer = self.pending.defer
        self.inference_latency = cast(Histogram, defer(self.inference_latency))
        self.inference_cpu = cast(Counter, defer(self.inference_cpu))
        self.batch_size = cast(Histogram, defer(self.batch_size))
        self.queue_wait = cast(Histogram, defer(self.queue_wait))
        self.tokens = cast(Counter, defer(self.tokens))
        self.time_to_first_token = cast(Histogram, defer(self.time_to_first_token))
        self.inter_token_latency = cast(Histogram, defer(self.inter_token_latency))
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        for kind in ("prompt", "generated"):
            self.tokens.labels(kind)
        for reason in ("ttl", "capacity", "deleted"):
            self.sessions_evicted.labels(reason)

    def observe_request(
        self, route: str, method: str, status: int, elapsed: float, model: tuple[str, str] | None
    ) -> None:
        """One HTTP request's metrics: its count and latency, and its count under the model version it worked on."""
        key = (route, method, status, model)
        series = self._request_series.get(key)
        if series is None:
            series = self._request_series[key] = self._new_request_series(route, method, str(status), model)
        count, latency, per_model = series
        count.inc()
        latency.observe(elapsed)
        if per_model is not None:
            per_model.inc()

    def _new_request_series(self, route: str, method: str, status: str, model: tuple[str, str] | None) -> _Series:
        # Looking a labelled child up takes a lock and a tuple per call; the labels are bounded (route templates,
        # methods, statuses, loaded versions), so each combination's children are kept. The bound below only
        # guards against a surprise: emptying the cache loses nothing, the children stay registered.
        if len(self._request_series) >= 4096:
            self._request_series.clear()
        defer = self.pending.defer
        per_model = None if model is None else defer(self.model_requests.labels(*model, route, status))
        return defer(self.requests.labels(route, method, status)), defer(self.request_latency.labels(route)), per_model

    async def keep_applied(self, every_s: float = APPLY_S) -> None:
        """Apply the pending updates every `every_s` until cancelled (the app runs it for its lifetime)."""
        try:
            while True:
                await asyncio.sleep(every_s)
                self.pending.apply()
        finally:
            self.pending.apply()

    def render(self) -> bytes:
        """The text exposition format of this app's registry."""
        return generate_latest(self.registry)


class _Tee:
    """Updates the server-wide metric and the model version's labelled one together."""

    def __init__(self, total: Any, own: Any) -> None:
        self._total, self._own = total, own

    def inc(self, amount: float = 1) -> None:
        self._total.inc(amount)
        self._own.inc(amount)

    def observe(self, amount: float) -> None:
        self._total.observe(amount)
        self._own.observe(amount)


class _TeeGauge(_Tee):
    """A version's gauge inside the server-wide sum: `set` moves the sum by the difference."""

    def __init__(self, total: Gauge, own: Gauge) -> None:
        super().__init__(total, own)
        self._value = 0.0

    def inc(self, amount: float = 1) -> None:
        super().inc(amount)
        self._value += amount

    def dec(self, amount: float = 1) -> None:
        self.inc(-amount)

    def set(self, value: float) -> None:
        self._total.inc(value - self._value)
        self._own.set(value)
        self._value = value

    def clear(self) -> None:
        """The version is freed: its share leaves the sum."""
        self.set(0)


class _TeeLabels:
    def __init__(self, total: Counter, own: Counter, prefix: tuple[str, ...]) -> None:
        self._total, self._own, self._prefix = total, own, prefix

    def labels(self, *values: str) -> _Tee:
        return _Tee(self._total.labels(*values), self._own.labels(*self._prefix, *values))


class ModelMetrics(Metrics):
    """What one model version's engine records into: the server's metrics, with sessions, tokens, batch sizes and
    readiness also counted under {model, version}. Readiness is the version's own (`lstm_serve_ready` is the default
    model's, set by the registry)."""

    def __init__(self, base: Metrics, model: str, version: str) -> None:
        self.__dict__.update(base.__dict__)
        self.base, self.labels = base, (model, version)
        self.active_sessions_share = _TeeGauge(base.active_sessions, base.model_sessions.labels(model, version))
        self.ready = base.model_ready.labels(model, version)
        self.active_sessions = cast(Gauge, self.active_sessions_share)
        self.sessions_created = cast(
            Counter, _Tee(base.sessions_created, base.model_sessions_created.labels(model, version))
        )
        defer = base.pending.defer  # the version's share of the hot metrics waits like the totals
        self.tokens = cast(Counter, _TeeLabels(base.tokens, defer(base.model_tokens), (model, version)))
        self.batch_size = cast(Histogram, _Tee(base.batch_size, defer(base.model_batch_size.labels(model, version))))
        for kind in ("prompt", "generated"):
            base.model_tokens.labels(model, version, kind)

    def forget(self) -> None:
        """The version is freed: its labelled series go (the repository bounds them)."""
        self.active_sessions_share.clear()
        for metric in (
            self.base.model_ready,
            self.base.model_sessions,
            self.base.model_sessions_created,
            self.base.model_batch_size,
            self.base.model_draining,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(*self.labels)
        for kind in ("prompt", "generated"):
            with contextlib.suppress(KeyError):
                self.base.model_tokens.remove(*self.labels, kind)


class MetricsServer:
    """/metrics on a port of its own (metrics_port), so that it is not exposed with the API: prometheus-client's
    own HTTP server, in a daemon thread, serving this app's registry."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=metrics.registry)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
