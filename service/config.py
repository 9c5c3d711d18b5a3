"""Server settings: environment variables prefixed LSTM_SERVE_, each also a `lstm-serve serve` flag.

Every value is checked when Settings is built, so a bad setting stops the server at start with a message
naming it, rather than failing on the first request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.paths import BUNDLED_MODEL
from service.engine.config import EngineConfig
from service.engine.streams import MAX_GROUP_TOKENS

ENV_PREFIX = "LSTM_SERVE_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, protected_namespaces=()
    )

    # The model and where it runs
    model_path: Path = Field(default=BUNDLED_MODEL, description="ONNX model exported by `lstm-serve export`.")
    model_repository: Path | None = Field(
        default=None,
        description="Serve every version of every model in this repository (REPO/<name>/<version>/model.onnx, "
        "as `lstm-serve export --repository` writes it) instead of one model_path.",
    )
    model_repository_poll_s: float = Field(
        default=0.0,
        ge=0,
        le=86_400,
        description="Seconds between scans of model_repository for new (and removed) versions; 0 = no polling "
        "(POST /v2/repository/models/{name}/load still loads new versions).",
    )
    default_model: str | None = Field(
        default=None,
        description="The model used when a request names none (with model_repository; default: the only model, "
        "or the bundled model's name).",
    )
    admin_api_keys: SecretStr = Field(
        default=SecretStr(""),
        description="Comma-separated keys for the repository API (/v2/repository: index, load, unload); needed "
        "there whenever API keys are on. Admin keys are valid API keys too.",
    )
    provider: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="Execution provider: auto (CUDA when onnxruntime-gpu and a GPU are present), cpu, cuda.",
    )
    precision: Literal["auto", "fp32", "int8"] = Field(
        default="auto",
        description="Which bundled model serves when model_path is not set: auto (int8 on the CPU provider when its "
        "recorded held-out loss is within 0.01 nats/char of fp32's, fp32 otherwise and on CUDA), fp32, int8.",
    )
    intra_op_threads: int = Field(
        default=1,
        ge=0,
        le=256,
        description="ONNX Runtime threads inside an operator (0 = one per physical core). One is fastest for "
        "small batches on a busy CPU.",
    )
    inter_op_threads: int = Field(
        default=1, ge=0, le=256, description="ONNX Runtime threads across operators (0 = ORT's default)."
    )
    graph_optimization: Literal["all", "extended", "basic", "disabled"] = Field(
        default="all", description="ONNX Runtime graph optimisation level."
    )
    allow_spinning: bool = Field(
        default=False,
        description="Let ONNX Runtime's idle threads spin: lower latency, but they burn CPU between batches.",
    )
    next_token_graph: bool = Field(
        default=True,
        description=(
            "Compute predicts' softmax and top-k inside ONNX Runtime, with a second session of the model that has "
            "those nodes added (service/engine/next_token.py). Faster predicts; costs about three times the model "
            "file's size in memory (41 MB for the bundled fp32 model). Off: top-k in Python."
        ),
    )

    gil_switch_interval_ms: float = Field(
        default=0.5,
        gt=0,
        le=100,
        description="CPython's GIL switch interval for the server process (CPython's default is 5 ms): how long the "
        "engine thread (ONNX Runtime, batching) can wait for the GIL after a run while the event loop holds it. "
        "Against 5 ms the benchmark measured 1.14-1.25x tokens/s for one stream, 0.99-1.14x for 64 (docs/benchmarks).",
    )

    # HTTP
    host: str = Field(default="127.0.0.1", description="Address to listen on (0.0.0.0 in a container).")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port.")
    max_request_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        le=256 * 1_048_576,
        description="Largest request body accepted; larger ones get 413.",
    )
    max_text_length: int = Field(
        default=8192, ge=1, le=1_000_000, description="Most characters (or token ids) one request may feed."
    )
    max_request_tokens: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="Most token steps one request may cost, rows x length summed (V2 infer's rows included); "
        "unset = max_text_length. A single input is also held to it.",
    )
    shutdown_grace_s: float = Field(
        default=10.0, ge=0, le=3600, description="Seconds to finish in-flight requests after SIGTERM."
    )
    shutdown_delay_s: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="After SIGTERM, keep listening this long and answer /readyz 503 draining (new sessions and "
        "streams 503 draining, other requests served) before closing the listener and draining; lets a load "
        "balancer see the 503 first. 0 = close the listener at once.",
    )
    header_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A connection that has not sent a request's complete headers this long after it opened (or "
        "after its request began) is closed.",
    )
    keep_alive_timeout_s: int = Field(
        default=5,
        gt=0,
        le=3600,
        description="An idle keep-alive connection (no request in progress) is closed after this many seconds.",
    )
    max_connections: int = Field(
        default=10_000,
        ge=0,
        le=10_000_000,
        description="Most open connections (HTTP and WebSocket); one more is answered 503 too_many_connections and "
        "closed. 0 = no limit. The open-files limit is raised to its hard limit at start.",
    )
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated IPs or CIDRs of proxies whose X-Forwarded-For is believed: the client is the "
        "first hop, from the right, that is not a trusted proxy. Empty: the client is the peer address.",
    )

    # Batching
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Most work items in one ONNX Runtime batch.")
    # 0 by default: on CPU any timer costs a lone request 1-3 ms, while batches still form from the requests that
    # arrive while a batch runs (measured: 8 and 64 concurrent clients gave the same mean batch with 0 as with 2 ms).
    # Raise it on a GPU, where a bigger batch costs almost nothing extra.
    max_batch_delay_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="Longest a work item waits for others to share its batch (0 = take whatever is queued; "
        "requests arriving while a batch runs still share the next one).",
    )

    # Sessions and their state
    prefill_chunk_tokens: int = Field(
        default=128,
        ge=0,
        le=1_000_000,
        description="Long inputs are fed this many tokens per batch turn, so other sessions' short steps and stream "
        "tokens run between the chunks (chunked prefill); the result is the same as feeding it whole. 0 = whole.",
    )
    state_backend: Literal["memory", "redis"] = Field(default="memory", description="Where session states live.")
    redis_url: str = Field(default="redis://localhost:6379/0", description="Redis URL for state_backend=redis.")
    redis_key_prefix: str = Field(
        default="lstm-serve",
        min_length=1,
        max_length=100,
        description="Prefix of the Redis keys (the model fingerprint is appended, so models never share states).",
    )
    max_sessions: int = Field(default=10_000, ge=1, le=10_000_000, description="Most sessions held at once.")
    session_ttl_s: float = Field(
        default=1800.0, gt=0, description="Idle time after which a session expires (default for new sessions)."
    )
    max_session_ttl_s: float = Field(default=86_400.0, gt=0, description="Largest ttl_seconds a client may ask for.")
    evict_idle_after_s: float = Field(
        default=60.0,
        ge=0,
        description="When the store is full, the least-recently-used session is evicted if idle at least this "
        "long; otherwise creating a session gets 429. 0 = always evict the LRU session.",
    )
    sweep_interval_s: float = Field(default=5.0, gt=0, le=3600, description="How often expired sessions are swept.")
    remember_expired: int = Field(
        default=100_000,
        ge=0,
        le=10_000_000,
        description="Expired/evicted ids remembered to answer session_expired rather than session_not_found.",
    )
    snapshot_path: Path | None = Field(
        default=None,
        description="Memory backend: file the sessions are saved to (periodically and at shutdown) and restored "
        "from at start.",
    )
    snapshot_interval_s: float = Field(
        default=60.0, ge=0, description="Seconds between snapshots (0 = only at shutdown)."
    )
    durable: bool = Field(
        default=False,
        description="Memory backend with snapshot_path: journal every change (one write and fsync per batch) "
        "beside the snapshot, so every acknowledged step survives a crash (SIGKILL); the journal is replayed at "
        "start and compacted into each snapshot.",
    )

    # Generation and inspection
    max_generate_tokens: int = Field(
        default=1000, ge=1, le=100_000, description="Most tokens one generation may produce."
    )
    stream_group_tokens: int = Field(
        default=MAX_GROUP_TOKENS,
        ge=1,
        le=MAX_GROUP_TOKENS,
        description="A stream's tokens are handed to its connection in groups: once this many are ready or the "
        "oldest has waited stream_group_delay_ms (its first token and its end go at once). 1: every token alone. "
        "Each write costs the event loop about the same whatever it carries: with 64 SSE streams 8 gave "
        "1.35-1.38x the tokens/s of 1.",
    )
    stream_group_delay_ms: float = Field(
        default=20.0,
        ge=0,
        le=1000,
        description="Longest a generated token waits for others to share its write (stream_group_tokens).",
    )
    max_inspect_length: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Most characters one gate inspection may feed (its answer holds 6 vectors of hidden_size "
        "floats per character and layer).",
    )

    # Access and limits
    api_keys: SecretStr = Field(
        default=SecretStr(""),
        description="Comma-separated API keys; when set (or api_key_file is), every /v1 and /v2 route needs "
        "`Authorization: Bearer <key>`. Empty and no key file: authentication is off.",
    )
    api_key_file: Path | None = Field(
        default=None,
        description="File of hashed keys, one `sha256:<hex>` (optionally after a name) per line; "
        "make a line with `lstm-serve hash-key`.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve /metrics on this port only (not on the API port), so it is not exposed with the API.",
    )
    model_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="Expected SHA-256 of the model file; a mismatch stops the start.",
    )
    rate_limit_per_s: float = Field(
        default=100.0,
        ge=0,
        le=1_000_000,
        description="Requests per second per API key (token bucket; 0 = off). Applies when keys are configured.",
    )
    rate_limit_burst: int = Field(
        default=200, ge=1, le=1_000_000, description="Requests a key may make at once above its steady rate."
    )
    max_sessions_per_key: int = Field(
        default=1000,
        ge=0,
        le=10_000_000,
        description="Most sessions one API key may hold (0 = only max_sessions). Applies when keys are configured.",
    )
    max_sessions_per_client: int | None = Field(
        default=None,
        ge=0,
        le=10_000_000,
        description="Without API keys: most sessions one client (peer address, or its X-Forwarded-For hop behind a "
        "trusted proxy) may hold; loopback peers are not counted. Unset = max_sessions // 10; 0 = no limit.",
    )
    max_streams_per_key: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="Most generations one API key may run at once (0 = no limit). Applies when keys are configured.",
    )
    request_timeout_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="Longest a request may take before its response starts (then 504 request_timeout, nothing "
        "changed); streams are bounded by max_generate_tokens instead, so long generations should stream. "
        "0 = no timeout.",
    )

    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Log level."
    )
    log_json: bool = Field(default=True, description="One JSON object per log line (false: plain text for humans).")
    opentelemetry: bool = Field(
        default=False,
        description="Let FastAPI's native OpenTelemetry instrumentation run when a provider is configured. Off: the "
        "server's metrics are Prometheus, and the check costs every request a look at the global providers.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("model_path")
    @classmethod
    def _model_exists(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError(
                f"model file {v} does not exist; train and export one (`lstm-serve train`, "
                "`lstm-serve export`) or point --model-path / LSTM_SERVE_MODEL_PATH at one"
            )
        return v

    @field_validator("snapshot_path")
    @classmethod
    def _snapshot_dir_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.parent.is_dir():
            raise ValueError(f"directory of snapshot_path {v} does not exist")
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_parse(cls, v: str) -> str:
        from service.security.clients import parse_networks

        parse_networks(v)  # a ValueError naming the bad entry
        return v

    @field_validator("api_key_file")
    @classmethod
    def _key_file_readable(cls, v: Path | None) -> Path | None:
        if v is None:
            return v
        from service.security.keys import InvalidKeyFile, read_key_file

        if not v.is_file():
            raise ValueError(f"api_key_file {v} does not exist")
        try:
            if not list(read_key_file(v)):
                raise ValueError(f"api_key_file {v} holds no keys")
        except InvalidKeyFile as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="before")
    @classmethod
    def _one_source(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("model_repository") and data.get("model_path"):
            raise ValueError("give model_repository or model_path, not both")
        return data

    @model_validator(mode="after")
    def _served_precision(self) -> Settings:
        if "model_path" not in self.model_fields_set:
            from model.quantize import served_artifact

            self.model_path = served_artifact(self.provider, self.precision, self.model_path)
        elif self.precision != "auto":
            raise ValueError(
                f"precision {self.precision} chooses between the bundled models; with model_path set, point it at "
                "the file to serve and leave precision auto"
            )
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.session_ttl_s > self.max_session_ttl_s:
            raise ValueError(
                f"session_ttl_s ({self.session_ttl_s}) exceeds max_session_ttl_s ({self.max_session_ttl_s})"
            )
        if self.state_backend == "redis" and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url {self.redis_url!r} is not a redis://, rediss:// or unix:// URL")
        if self.durable and (self.snapshot_path is None or self.state_backend != "memory"):
            raise ValueError(
                "durable needs the memory backend and snapshot_path (LSTM_SERVE_SNAPSHOT_PATH): the journal is "
                "kept beside the snapshot; Redis keeps its own persistence"
            )
        if self.model_repository is not None and not self.model_repository.is_dir():
            raise ValueError(f"model_repository {self.model_repository} is not a directory")
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError(f"metrics_port {self.metrics_port} is the API port; choose another or leave it unset")
        return self

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    @property
    def keys_configured(self) -> bool:
        return bool(self.api_key_list) or self.api_key_file is not None

    @property
    def request_token_limit(self) -> int:
        return self.max_text_length if self.max_request_tokens is None else self.max_request_tokens

    @property
    def client_session_limit(self) -> int:
        """Sessions one anonymous client may hold (0: none beyond max_sessions)."""
        if self.max_sessions_per_client is None:
            return self.max_sessions // 10
        return self.max_sessions_per_client

    @property
    def admin_api_key_list(self) -> list[str]:
        return [k.strip() for k in self.admin_api_keys.get_secret_value().split(",") if k.strip()]

    @property
    def max_batch_delay_s(self) -> float:
        return self.max_batch_delay_ms / 1000.0

    def engine_config(self) -> EngineConfig:
        """The few fields the engine uses, frozen: the engine never sees the rest of the settings."""
        return EngineConfig(
            max_batch_size=self.max_batch_size,
            max_batch_delay_s=self.max_batch_delay_s,
            prefill_chunk_tokens=self.prefill_chunk_tokens,
            # One input is held to the per-request cost cap too, so every route answers text_too_long at the cap.
            max_text_length=min(self.max_text_length, self.request_token_limit),
            max_request_tokens=self.request_token_limit,
            max_inspect_length=self.max_inspect_length,
            session_ttl_s=self.session_ttl_s,
            max_session_ttl_s=self.max_session_ttl_s,
            # The engine limits sessions per owner tag: an API key's principal, or without keys the client's tag
            # (service/api/access.py), so one limit field serves both modes.
            max_sessions_per_key=self.max_sessions_per_key if self.keys_configured else self.client_session_limit,
            max_generate_tokens=self.max_generate_tokens,
            max_streams_per_key=self.max_streams_per_key,
            stream_group_tokens=self.stream_group_tokens,
            stream_group_delay_s=self.stream_group_delay_ms / 1000.0,
            max_sequences=self.max_sessions,
            sweep_interval_s=self.sweep_interval_s,
        )


def unknown_env_vars(environ: dict[str, str] | None = None) -> list[str]:
    """LSTM_SERVE_* variables that name no setting: probably typos, worth a warning at start."""
    env = os.environ if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    # LSTM_SERVE_SLOW selects the slow tests; it is not a server setting.
    return sorted(k for k in env if k.upper().startswith(ENV_PREFIX) and k.upper() not in known | {"LSTM_SERVE_SLOW"})
