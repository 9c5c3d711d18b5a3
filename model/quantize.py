"""int8: ONNX Runtime's dynamic quantization of an exported model, written as an artifact of its own.

`quantize_model` turns an fp32 file from `lstm-serve export` into an int8 one:
- each `LSTM` operator becomes ONNX Runtime's `DynamicQuantizeLSTM` (domain com.microsoft): W and R stored as
  int8 with one symmetric scale per tensor, the input and the recurrent state quantized to uint8 on the fly at
  every call (per tensor, over the whole batch), integer GEMMs, gates and cell update in float32;
- the embedding (`Gather`, a lookup) and the output layer (`MatMul` + `Add`, about 1% of a step's multiplies)
  stay float32. `quantize_dynamic` would turn the MatMul into DynamicQuantizeLinear + MatMulInteger, but the
  server re-runs the output layer alone on stored states (service/engine/head.py), which needs it as a float
  MatMul + Add of the file's weights, and quantizing it measured no faster. `Gemm` is not in ONNX Runtime's
  dynamic (IntegerOps) registry; the graph has none.

The new file keeps every metadata key of its parent (vocabulary, config, corpus, ...) so the server loads it like
any model, and adds `quantization: int8`, `parent_fingerprint` and `parent_val_loss`; its `val_loss` is its own,
measured through ONNX Runtime. Its fingerprint is the same SHA-256 over its own initializers (int8 weights and
their scales), so it never equals the parent's and states of the two never mix.

`served_artifact` picks which bundled file the server runs; `dequantized_reference` is the NumPy reference of the
notes' equations with the int8 weights dequantized, the oracle of the int8 parity tests. No torch here.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from model.onnx_meta import ModelMetadata, fingerprint
from model.paths import BUNDLED_MODEL
from model.reference import LayerWeights, ReferenceLSTM

Precision = Literal["auto", "fp32", "int8"]
ProviderChoice = Literal["auto", "cpu", "cuda"]

QUANTIZATION_KEY = "quantization"  # "int8"; absent on fp32 files
PARENT_FINGERPRINT_KEY = "parent_fingerprint"
PARENT_VAL_LOSS_KEY = "parent_val_loss"
INT8 = "int8"
# int8 is served by default on CPU only when its held-out loss is at most this much above fp32's (nats/char).
MAX_LOSS_INCREASE = 0.01
QUANTIZED_OPS = ("LSTM",)
QUANTIZED_LSTM = "DynamicQuantizeLSTM"
CUDA = "CUDAExecutionProvider"


class QuantizeError(ValueError):
    """The file cannot be quantized (not an fp32 export) or the quantized graph is not the expected one."""


@dataclass(frozen=True)
class Quantized:
    """What `quantize_model` wrote: the int8 file, its metadata and its parent's."""

    path: Path
    metadata: ModelMetadata
    parent: ModelMetadata
    props: dict[str, str]

    @property
    def loss_increase(self) -> float | None:
        if self.metadata.val_loss is None or self.parent.val_loss is None:
            return None
        return self.metadata.val_loss - self.parent.val_loss


def int8_path(fp32: Path) -> Path:
    """`shakespeare-lstm.onnx` -> `shakespeare-lstm.int8.onnx`, beside it."""
    return fp32.with_name(fp32.stem + ".int8" + fp32.suffix)


BUNDLED_INT8_MODEL = int8_path(BUNDLED_MODEL)


def read_props(path: Path) -> dict[str, str]:
    """The metadata_props of an ONNX file."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def weights_fingerprint(proto: onnx.ModelProto) -> str:
    """The fingerprint export computes, over this graph's initializers."""
    return fingerprint((t.name, numpy_helper.to_array(t).tobytes()) for t in proto.graph.initializer)


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """quantize_dynamic logs a pre-processing hint on the root logger at every call; it does not apply here."""
    root = logging.getLogger()

    def drop(record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()

    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _quantize_graph(src: Path, num_layers: int) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8.onnx"
        with _quiet_quantizer():
            quantize_dynamic(
                src,
                out,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=False,
                weight_type=QuantType.QInt8,
                extra_options={"WeightSymmetric": True},
            )
        proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    if ops.count(QUANTIZED_LSTM) != num_layers or "LSTM" in ops:
        raise QuantizeError(
            f"expected {num_layers} {QUANTIZED_LSTM} operators and no float LSTM after quantization, got {ops}"
        )
    return proto


def _save(proto: onnx.ModelProto, props: Mapping[str, str], out: Path) -> None:
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, dict(props))
    onnx.save(proto, str(out))


def quantize_model(src: Path, out: Path | None = None, val_text: str | None = None) -> Quantized:
    """Write the int8 form of the fp32 export `src` to `out` (default `int8_path(src)`).

    With `val_text`, the int8 file's loss on it is measured through ONNX Runtime and recorded as its `val_loss`
    (and the parent's too when the parent recorded none); without, the int8 file records no loss and is never
    served by default. The file appears whole or not at all.
    """
    from model.evaluate import evaluate_onnx

    out = int8_path(src) if out is None else out
    parent_props = read_props(src)
    parent = ModelMetadata.from_props(parent_props)
    if parent_props.get(QUANTIZATION_KEY, "fp32") != "fp32":
        raise QuantizeError(f"{src} is already quantized ({parent_props[QUANTIZATION_KEY]}); quantize the fp32 file")
    proto = _quantize_graph(src, parent.config.num_layers)
    parent_loss = parent.val_loss
    if parent_loss is None and val_text is not None:
        parent_loss = evaluate_onnx(src, val_text).nats_per_char
    props = {k: v for k, v in parent_props.items() if k != "val_loss"}
    props |= {
        "fingerprint": weights_fingerprint(proto),
        QUANTIZATION_KEY: INT8,
        PARENT_FINGERPRINT_KEY: parent.fingerprint,
    }
    if parent_loss is not None:
        props[PARENT_VAL_LOSS_KEY] = f"{parent_loss:.6f}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        _save(proto, props, tmp)
        if val_text is not None:
            props["val_loss"] = f"{evaluate_onnx(tmp, val_text).nats_per_char:.6f}"
            _save(proto, props, tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    parent = ModelMetadata.from_props({**parent_props, "val_loss": props.get(PARENT_VAL_LOSS_KEY, "")})
    return Quantized(out, ModelMetadata.from_props(props), parent, props)


# ---- which file to serve ----------------------------------------------------------------------------------------


def resolve_provider(provider: ProviderChoice) -> Literal["cpu", "cuda"]:
    """The provider a server with this setting runs on: `auto` is CUDA where this ONNX Runtime offers it (the
    rule of service/engine/ort.py)."""
    if provider == "auto":
        return "cuda" if CUDA in ort.get_available_providers() else "cpu"
    return provider


def int8_qualifies(fp32: Path, int8: Path) -> bool:
    """True when `int8` is the int8 file of exactly this `fp32` file and both record a held-out loss, the int8 one
    at most MAX_LOSS_INCREASE above. A stale int8 file (of an earlier fp32 model) never qualifies."""
    if not (fp32.is_file() and int8.is_file()):
        return False
    parent, child = read_props(fp32), read_props(int8)
    if child.get(QUANTIZATION_KEY) != INT8 or child.get(PARENT_FINGERPRINT_KEY) != parent.get("fingerprint"):
        return False
    try:
        return float(child["val_loss"]) - float(parent["val_loss"]) <= MAX_LOSS_INCREASE
    except (KeyError, ValueError):
        return False


def served_artifact(
    provider: ProviderChoice = "auto", precision: Precision = "auto", fp32: Path = BUNDLED_MODEL
) -> Path:
    """The bundled file to serve: `fp32` or its int8 sibling (`int8_path(fp32)`).

    precision `fp32` -> fp32; `int8` -> int8 (an error if there is none); `auto` -> int8 on the CPU provider when
    `int8_qualifies`, fp32 otherwise and always on CUDA (DynamicQuantizeLSTM is a CPU kernel).
    """
    int8 = int8_path(fp32)
    if precision == "fp32":
        return fp32
    if precision == "int8":
        if not int8.is_file():
            raise FileNotFoundError(f"no int8 model {int8}; make it with `lstm-serve quantize --model {fp32}`")
        return int8
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32 or int8, not {precision!r}")
    if resolve_provider(provider) == "cpu" and int8_qualifies(fp32, int8):
        return int8
    return fp32


# ---- the NumPy reference with the int8 weights dequantized ------------------------------------------------------


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """int8 (dirs, in, 4H) with a scale and zero point per tensor (1,) or per output row (dirs, 4H) ->
    float64 (dirs, 4H, in), the layout of the float LSTM operator."""
    s = scale.astype(np.float64).reshape(q.shape[0], 1, -1)  # broadcasts over `in`; -1 is 1 or 4H
    z = zero_point.astype(np.float64).reshape(q.shape[0], 1, -1)
    return np.transpose((q.astype(np.float64) - z) * s, (0, 2, 1))


def dequantized_reference(path: Path) -> ReferenceLSTM:
    """ReferenceLSTM (model/reference.py) of an int8 file from `quantize_model`, weights dequantized, computed in
    float64. Its activations are not quantized, so it differs from ONNX Runtime's int8 run by the per-call uint8
    rounding of the LSTM inputs and states (tests/model/test_quantize.py bounds that)."""
    proto = onnx.load(str(path))
    meta = ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    layers = []
    for node in proto.graph.node:
        if node.op_type == "LSTM":
            raise QuantizeError(f"{path} has a float LSTM operator; use ReferenceLSTM.from_onnx for fp32 files")
        if node.op_type != QUANTIZED_LSTM:
            continue
        w_q, r_q, b_name, _, _, _, p_name, w_s, w_z, r_s, r_z = node.input[1:12]
        w = _dequantize(inits[w_q], inits[w_s], inits[w_z])[0]  # (4H, in)
        r = _dequantize(inits[r_q], inits[r_s], inits[r_z])[0]  # (4H, H)
        b = inits[b_name].astype(np.float64)[0]  # (8H,)
        peep = inits[p_name].astype(np.float64)[0] if p_name else None  # (3H,)
        layers.append(LayerWeights.from_onnx(w, r, b, peep))
    if len(layers) != meta.config.num_layers:
        raise QuantizeError(f"found {len(layers)} {QUANTIZED_LSTM} operators, config says {meta.config.num_layers}")
    f64 = {k: inits[k].astype(np.float64) for k in ("embedding", "head_w", "head_b")}
    return ReferenceLSTM(meta, f64["embedding"], layers, f64["head_w"], f64["head_b"])


def load_reference(path: Path) -> ReferenceLSTM:
    """The NumPy reference of any file lstm-serve exports or quantizes."""
    if read_props(path).get(QUANTIZATION_KEY) == INT8:
        return dequantized_reference(path)
    return ReferenceLSTM.from_onnx(path)


# ---- raw ONNX Runtime speed, as service/bench/limit.py measures it ----------------------------------------------


def _server_session(path: Path) -> ort.InferenceSession:
    """The server's default session options: one intra-op thread, sequential, full optimisation, no spinning."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def raw_speed(
    paths: Mapping[str, Path], batches: tuple[int, ...] = (1, 64), budget_s: float = 1.5, rounds: int = 5
) -> dict[str, dict[int, float]]:
    """Tokens per second of one-token steps at each batch size, state carried, CPU, one intra-op thread:
    {label: {batch: tokens/s}}. The models take turns for `rounds` rounds of `budget_s` seconds each (so a busy
    neighbour slows them alike); each figure is the median step time over all its rounds."""
    sessions = {label: _server_session(p) for label, p in paths.items()}
    times: dict[tuple[str, int], list[float]] = {(label, b): [] for label in paths for b in batches}
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        for b in batches:
            for label, sess in sessions.items():
                shape = sess.get_inputs()[1].shape  # [layers, "batch", hidden]
                vocab = int(sess.get_outputs()[0].shape[2])
                ids = rng.integers(0, vocab, size=(b, 1), dtype=np.int64)
                h = c = np.zeros((int(shape[0]), b, int(shape[2])), np.float32)
                for _ in range(3):  # let ORT allocate for this shape first
                    _, h, c = sess.run(None, {"input_ids": ids, "h0": h, "c0": c})
                end = time.perf_counter() + budget_s
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    _, h, c = sess.run(None, {"input_ids": ids, "h0": h, "c0": c})
                    times[label, b].append(time.perf_counter() - t0)
    return {label: {b: b / float(np.median(times[label, b])) for b in batches} for label in paths}
