"""ONNX Runtime wrapper: loads the exported model and its metadata, picks the execution provider, runs batches.

The contract (model/export.py): input_ids int64 (B, T), h0 and c0 float32 (L, B, H) -> logits float32
(B, T, V), hn and cn (L, B, H). Beside the graph as exported, the runtime holds it with the next-token softmax
and top-k added (service/engine/next_token.py), for the batches that answer predicts (`run_top`).

The session options favour small latency on CPU: few intra-op threads, no spinning (idle threads would burn the
cores the event loop needs), full graph optimisation; all configurable.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from model.onnx_meta import INPUT_NAMES, OUTPUT_NAMES, ModelMetadata, ModelMetadataError
from service.engine.next_token import TOP_K, with_next_token

log = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "cpu", "cuda"]
GraphOptimization = Literal["all", "extended", "basic", "disabled"]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_PROVIDER_NAMES = {CPU: "cpu", CUDA: "cuda"}
_OPT_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


class ModelLoadError(RuntimeError):
    """The model file cannot be served: unreadable, not the expected graph, or the provider is unavailable."""


def verify_sha256(path: Path, expected: str) -> None:
    """Refuse a model file whose SHA-256 is not `expected` (hex): corrupt, truncated or swapped."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    if not hmac.compare_digest(actual, expected.lower()):
        raise ModelLoadError(
            f"model file {path} has SHA-256 {actual}, not the expected {expected.lower()} "
            "(model_sha256): it is corrupt or not the model this server was configured for"
        )


def session_options(
    intra_op_threads: int, inter_op_threads: int, graph_optimization: GraphOptimization, allow_spinning: bool
) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads  # 0 = ORT's default (one per physical core)
    opts.inter_op_num_threads = inter_op_threads
    # The graph is a chain (embedding -> LSTM -> LSTM -> head): nothing to run in parallel between operators.
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = _OPT_LEVELS[graph_optimization]
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    opts.log_severity_level = 3  # errors only: ORT's warnings go to stderr outside our JSON logs
    return opts


def resolve_providers(choice: ProviderChoice) -> list[str]:
    available = ort.get_available_providers()
    if choice == "cpu":
        return [CPU]
    if choice == "cuda":
        if CUDA not in available:
            raise ModelLoadError(
                f"provider 'cuda' requested but ONNX Runtime offers only {available}; install onnxruntime-gpu "
                "(see README) or use provider 'auto' or 'cpu'"
            )
        return [CUDA, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]


class OnnxRuntime:
    """One ONNX Runtime session of the exported char LSTM. `run` is thread-safe; the batcher calls it from one
    worker thread."""

    def __init__(
        self,
        path: Path,
        provider: ProviderChoice = "auto",
        *,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        graph_optimization: GraphOptimization = "all",
        allow_spinning: bool = False,
        next_token: bool = True,
    ) -> None:
        self.path = path
        opts = session_options(intra_op_threads, inter_op_threads, graph_optimization, allow_spinning)
        providers = resolve_providers(provider)
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for unreadable or invalid files
            raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from exc
        active = self._session.get_providers()[0]
        # ORT falls back to CPU silently when the CUDA libraries fail to load: report what actually runs.
        if provider == "cuda" and active != CUDA:
            raise ModelLoadError(f"provider 'cuda' requested but ONNX Runtime runs the model on {active}")
        self.provider: str = _PROVIDER_NAMES.get(active, active)
        try:
            self.metadata = ModelMetadata.from_props(self._session.get_modelmeta().custom_metadata_map)
        except ModelMetadataError as exc:
            raise ModelLoadError(f"{path}: {exc}") from exc
        self._check_contract()
        cfg = self.metadata.config
        self.layers = cfg.num_layers
        self.hidden = cfg.hidden_size
        self.vocab_size = cfg.vocab_size
        self._lock = threading.Lock()
        self._runs = 0
        # The graph with softmax and top-k added (service/engine/next_token.py), for batches that answer predicts.
        self._next_token = self._load_next_token(opts, providers) if next_token else None

    def _load_next_token(self, opts: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession | None:
        try:
            return ort.InferenceSession(with_next_token(self.path), sess_options=opts, providers=providers)
        except Exception:  # an unusual graph: predicts then take their top-k in Python, as staircase batches do
            log.warning("%s: the next-token nodes cannot be added; top-k runs in Python", self.path, exc_info=True)
            return None

    @property
    def has_next_token(self) -> bool:
        """Whether `run_top` runs softmax and top-k in the graph."""
        return self._next_token is not None

    def _check_contract(self) -> None:
        inputs = tuple(i.name for i in self._session.get_inputs())
        outputs = tuple(o.name for o in self._session.get_outputs())
        if inputs != INPUT_NAMES or outputs != OUTPUT_NAMES:
            raise ModelLoadError(
                f"{self.path}: graph has inputs {inputs} and outputs {outputs}, "
                f"expected {INPUT_NAMES} -> {OUTPUT_NAMES}"
            )
        cfg = self.metadata.config
        h0 = self._session.get_inputs()[1].shape
        if h0[0] != cfg.num_layers or h0[2] != cfg.hidden_size:
            raise ModelLoadError(
                f"{self.path}: h0 has shape {h0}, metadata says layers {cfg.num_layers}, hidden {cfg.hidden_size}"
            )

    @property
    def runs(self) -> int:
        """ONNX Runtime calls made so far (tests use it to prove that requests are batched)."""
        return self._runs

    def run(self, ids: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ids (B, T) int64; h, c (L, B, H) float32 -> logits (B, T, V), hn (L, B, H), cn (L, B, H)."""
        logits, hn, cn = self._session.run(None, self._feeds(ids, h, c))
        self._count_run()
        return logits, hn, cn

    def run_top(
        self, ids: np.ndarray, h: np.ndarray, c: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`run`, plus the k most likely next tokens of each row's last position: probabilities (B, k) float64,
        most likely first, and their ids (B, k) int64; 1 <= k <= vocab_size. Needs `has_next_token`."""
        assert self._next_token is not None, "run_top needs the next-token graph (has_next_token)"
        feeds = self._feeds(ids, h, c)
        feeds[TOP_K] = np.array([k], dtype=np.int64)
        logits, hn, cn, probs, top = self._next_token.run(None, feeds)
        self._count_run()
        return logits, hn, cn, probs, top

    @staticmethod
    def _feeds(ids: np.ndarray, h: np.ndarray, c: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "input_ids": np.ascontiguousarray(ids, dtype=np.int64),
            "h0": np.ascontiguousarray(h, dtype=np.float32),
            "c0": np.ascontiguousarray(c, dtype=np.float32),
        }

    def _count_run(self) -> None:
        with self._lock:
            self._runs += 1
