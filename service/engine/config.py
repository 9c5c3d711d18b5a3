"""The engine's own configuration: a small frozen record of the settings it uses, built by the composition root.

The engine never sees `Settings` (the HTTP server's, the runtime's and the store's options are not its business);
`service.config.engine_config` is the one place that copies the fields across.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_batch_size: int = 32  # most work items in one ONNX Runtime batch
    max_batch_delay_s: float = 0.0  # how long the oldest queued item may wait for others to join its batch
    prefill_chunk_tokens: int = 128  # a longer input is fed this many tokens per batch turn; 0: all at once
    max_text_length: int = 8_192  # characters or token ids per request
    max_request_tokens: int = 8_192  # token steps one request may cost, rows x length summed (V2 rows included)
    max_inspect_length: int = 256  # characters per gate inspection (vectors per character come back)
    session_ttl_s: float = 1_800.0  # a new session's idle lifetime unless the client asks for another
    max_session_ttl_s: float = 86_400.0  # the largest TTL a client may ask for
    max_sessions_per_key: int = 1_000  # per owner tag (an API key, or an anonymous client); 0: only max_sessions
    max_generate_tokens: int = 1_000  # tokens per generation
    max_streams_per_key: int = 64  # concurrent generations per API key; 0: unbounded
    stream_group_tokens: int = 8  # a stream's consumer is woken once this many tokens are ready (streams.Grouping)
    stream_group_delay_s: float = 0.02  # ... or once the oldest has waited this long
    max_sequences: int = 10_000  # Open Inference Protocol sequences remembered (one session each)
    sweep_interval_s: float = 5.0  # how often expired sessions are swept
