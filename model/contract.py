"""The serving contract: what an ONNX file must be for lstm-serve to serve it, and `check_model`, which checks a file
against it and names every problem (the input, output or metadata key it concerns).

What the server relies on, and where:
- service/engine/ort.py loads the file with ONNX Runtime, reads the metadata (model/onnx_meta.py: `name`,
  `version`, `vocab`, `config`, `fingerprint`), requires the inputs and outputs below by name and in this order, and
  the layers and hidden sizes of h0 to be those of the config;
- the batcher feeds any batch size and any sequence length (both axes dynamic), carries a session's state by feeding
  hn and cn back as h0 and c0, and runs different sessions as rows of one batch (rows must not mix);
- the engine's warm-up runs (1, 1), (max batch, 1) and (1, 16) and wants logits (B, T, V) and finite values;
- generation that continues a session without a prompt runs the output layer alone on the stored top-layer h
  (service/engine/head.py): `logits` must be `Add(MatMul(y, W), b)` with W (H, V) and b initializers;
- gate inspection recomputes every gate from the file's weights (model/reference.py): one ONNX `LSTM` operator per
  layer with its weights as initializers, and initializers `embedding` (V, E), `head_w` (H, V), `head_b` (V,).
model/export.py and model/export_plain.py write files that meet all of it, and `lstm-serve quantize` int8 files meet
it within their per-call quantization (the reference dequantizes their weights). No torch here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from model.config import ModelConfig
from model.onnx_meta import INPUT_NAMES, OPTIONAL_KEYS, OUTPUT_NAMES, REQUIRED_KEYS, ModelMetadata
from model.quantize import INT8, QUANTIZATION_KEY
from model.tokenizer import CharTokenizer

INT64 = "tensor(int64)"
FLOAT = "tensor(float)"
# Axis names: `batch` and `seq` must be dynamic (a name or unknown); `layers`, `hidden` must be the config's numbers;
# `vocab` is the vocabulary size or dynamic.
DYNAMIC_AXES = ("batch", "seq")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # as ONNX Runtime spells it
    axes: tuple[str, ...]


INPUTS = (
    TensorSpec("input_ids", INT64, ("batch", "seq")),
    TensorSpec("h0", FLOAT, ("layers", "batch", "hidden")),
    TensorSpec("c0", FLOAT, ("layers", "batch", "hidden")),
)
OUTPUTS = (
    TensorSpec("logits", FLOAT, ("batch", "seq", "vocab")),
    TensorSpec("hn", FLOAT, ("layers", "batch", "hidden")),
    TensorSpec("cn", FLOAT, ("layers", "batch", "hidden")),
)
assert tuple(s.name for s in INPUTS) == INPUT_NAMES and tuple(s.name for s in OUTPUTS) == OUTPUT_NAMES
REQUIRED_METADATA = REQUIRED_KEYS
OPTIONAL_METADATA = OPTIONAL_KEYS
HEAD_INITIALIZERS = ("embedding", "head_w", "head_b")
FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")
# Shapes the engine's warm-up runs (its max batch is a setting; 8 stands for "more than one").
RUN_SHAPES = ((1, 1), (8, 1), (1, 16))
CHUNKS = (4, 1, 4)  # the chunked-vs-whole check feeds 9 tokens in these pieces, then all at once
ATOL = 1e-4  # float32 run in pieces against at once: the same arithmetic, so differences are rounding only
INSPECT_TOLERANCE = 1e-3  # the float64 reference against float32 ONNX Runtime (service/engine/inspection.py)
# An int8 file (`lstm-serve quantize`, metadata quantization=int8) quantizes its LSTM inputs and states per call with
# a scale taken from the whole batch, so pieces, rows and the reference agree to these instead (broken state
# carrying still differs by far more).
INT8_ATOL = 0.1
INT8_INSPECT_TOLERANCE = 0.25


@dataclass(frozen=True)
class Problem:
    subject: str  # "input 'h0'", "output 'logits'", "metadata 'vocab'", "graph", "file"
    message: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}"


@dataclass
class Report:
    path: Path
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # checks skipped and why
    metadata: ModelMetadata | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, subject: str, message: str) -> None:
        self.problems.append(Problem(subject, message))

    def subjects(self) -> list[str]:
        return [p.subject for p in self.problems]


def _inp(name: str) -> str:
    return f"input '{name}'"


def _out(name: str) -> str:
    return f"output '{name}'"


def _key(name: str) -> str:
    return f"metadata '{name}'"


def check_model(path: Path) -> Report:
    """Check `path` against the serving contract; the report lists every problem found (empty: it will serve)."""
    report = Report(Path(path))
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a file that is not a model
        report.add("file", f"cannot be read as ONNX: {exc}")
        return report
    config, tokenizer = _check_metadata(proto, report)
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own exception types
        report.add("file", f"ONNX Runtime cannot load it: {exc}")
        return report
    io_ok = _check_signature(sess, config, report)
    if config is None or tokenizer is None:
        report.notes.append("runs skipped: the metadata has no usable config and vocab")
        return report
    if not io_ok:
        report.notes.append("runs skipped: the inputs and outputs do not match the contract")
        return report
    runner = _Runner(sess, config, quantized=_props(proto).get(QUANTIZATION_KEY) == INT8)
    if runner.quantized:
        report.notes.append(
            f"int8 file: states and rows compared within {INT8_ATOL}, the reference within "
            f"{INT8_INSPECT_TOLERANCE} (activations are quantized per call)"
        )
    if not _check_runs(runner, report):
        report.notes.append("state checks skipped: the one-step runs failed")
        return report
    _check_state(runner, report)
    _check_head(proto, runner, report)
    _check_reference(path, runner, report)
    return report


def _props(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def _check_metadata(proto: onnx.ModelProto, report: Report) -> tuple[ModelConfig | None, CharTokenizer | None]:
    props = _props(proto)
    for key in REQUIRED_METADATA:
        if key not in props:
            report.add(_key(key), "missing (export with `lstm-serve export` or model/export_plain.py)")
        elif not props[key].strip():
            report.add(_key(key), "is empty")
    config = tokenizer = None
    if props.get("config", "").strip():
        try:
            config = ModelConfig.from_json(props["config"])
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            report.add(_key("config"), f"not a model config: {exc}")
    if props.get("vocab", "").strip():
        try:
            tokenizer = CharTokenizer.from_json(props["vocab"])
            if not isinstance(json.loads(props["vocab"]), str):
                raise ValueError("must be a JSON string of the characters in token-id order")
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            tokenizer = None
            report.add(_key("vocab"), f"not a vocabulary: {exc}")
    if config is not None and tokenizer is not None and tokenizer.vocab_size != config.vocab_size:
        report.add(
            _key("vocab"), f"has {tokenizer.vocab_size} characters but metadata 'config' says {config.vocab_size}"
        )
        tokenizer = None
    fp = props.get("fingerprint", "")
    if fp.strip() and not FINGERPRINT.match(fp):
        report.add(_key("fingerprint"), f"{fp[:80]!r} is not 'sha256:' and 64 lowercase hex digits")
    if props.get("val_loss"):
        try:
            float(props["val_loss"])
        except ValueError:
            report.add(_key("val_loss"), f"{props['val_loss'][:40]!r} is not a number")
    if props.get("corpus_description"):
        try:
            json.loads(props["corpus_description"])
        except json.JSONDecodeError as exc:
            report.add(_key("corpus_description"), f"not JSON: {exc}")
    if not report.problems:
        try:
            report.metadata = ModelMetadata.from_props(props)
        except ValueError as exc:  # anything the checks above missed
            report.add("metadata", str(exc))
    return config, tokenizer


def _expected_dim(axis: str, config: ModelConfig | None) -> int | None:
    if config is None:
        return None
    return {"layers": config.num_layers, "hidden": config.hidden_size, "vocab": config.vocab_size}.get(axis)


def _check_signature(sess: ort.InferenceSession, config: ModelConfig | None, report: Report) -> bool:
    ok = True
    for kind, specs, found in (("input", INPUTS, sess.get_inputs()), ("output", OUTPUTS, sess.get_outputs())):
        subject = _inp if kind == "input" else _out
        names = tuple(a.name for a in found)
        wanted = tuple(s.name for s in specs)
        by_name = {a.name: a for a in found}
        for spec in specs:
            if spec.name not in by_name:
                report.add(
                    subject(spec.name), f"missing: the graph's {kind}s are {list(names)}, expected {list(wanted)}"
                )
                ok = False
        for name in names:
            if name not in wanted:
                report.add(subject(name), f"not part of the contract (the {kind}s must be exactly {list(wanted)})")
                ok = False
        if ok and names != wanted:
            report.add(f"{kind}s", f"in the order {list(names)}; the server requires {list(wanted)}")
            ok = False
        for spec in specs:
            arg = by_name.get(spec.name)
            if arg is None:
                continue
            if arg.type != spec.dtype:
                report.add(subject(spec.name), f"has type {arg.type}, expected {spec.dtype}")
                ok = False
            ok = _check_shape(subject(spec.name), list(arg.shape), spec, config, report) and ok
    return ok


def _check_shape(
    subject: str, shape: Sequence[Any], spec: TensorSpec, config: ModelConfig | None, report: Report
) -> bool:
    want = "(" + ", ".join(spec.axes) + ")"
    if len(shape) != len(spec.axes):
        report.add(subject, f"has shape {shape}, expected rank {len(spec.axes)} {want}")
        return False
    ok = True
    for i, (dim, axis) in enumerate(zip(shape, spec.axes, strict=True)):
        fixed = isinstance(dim, int) and dim >= 0  # ORT: int for a fixed size, str for a named one, None unknown
        if axis in DYNAMIC_AXES:
            if fixed:
                report.add(
                    subject, f"axis {i} ({axis}) is fixed at {dim}; it must be dynamic (a dim_param such as '{axis}')"
                )
                ok = False
            continue
        expected = _expected_dim(axis, config)
        if axis in ("layers", "hidden") and not fixed:
            report.add(subject, f"axis {i} ({axis}) is {dim!r}; it must be the fixed size from metadata 'config'")
            ok = False
        elif fixed and expected is not None and dim != expected:
            report.add(subject, f"axis {i} ({axis}) is {dim}, but metadata 'config' says {axis} {expected}")
            ok = False
    return ok


class _Runner:
    def __init__(self, sess: ort.InferenceSession, config: ModelConfig, quantized: bool = False) -> None:
        self.sess = sess
        self.config = config
        self.quantized = quantized
        self.atol = INT8_ATOL if quantized else ATOL
        self.inspect_tolerance = INT8_INSPECT_TOLERANCE if quantized else INSPECT_TOLERANCE
        self.rng = np.random.default_rng(0)

    def close(self, a: np.ndarray, b: np.ndarray) -> bool:
        return a.shape == b.shape and bool(np.allclose(a, b, atol=self.atol, rtol=self.atol))

    def ids(self, b: int, t: int) -> np.ndarray:
        return self.rng.integers(0, self.config.vocab_size, size=(b, t), dtype=np.int64)

    def state(self, b: int, scale: float = 0.0) -> np.ndarray:
        shape = (self.config.num_layers, b, self.config.hidden_size)
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def run(self, ids: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, hn, cn = self.sess.run(list(OUTPUT_NAMES), {"input_ids": ids, "h0": h, "c0": c})
        return logits, hn, cn


def _check_runs(runner: _Runner, report: Report) -> bool:
    """The warm-up's shapes: outputs of the right shape, dtype float32 and finite."""
    cfg = runner.config
    ok = True
    for b, t in RUN_SHAPES:
        try:
            outs = runner.run(runner.ids(b, t), runner.state(b), runner.state(b))
        except Exception as exc:  # ORT's own types: a shape or type error inside the graph
            report.add("graph", f"a run of batch {b}, sequence {t} from a zero state fails: {exc}")
            return False
        want = {"logits": (b, t, cfg.vocab_size), "hn": (cfg.num_layers, b, cfg.hidden_size)}
        want["cn"] = want["hn"]
        for name, out in zip(OUTPUT_NAMES, outs, strict=True):
            if out.shape != want[name]:
                report.add(_out(name), f"batch {b}, sequence {t}: shape {out.shape}, expected {want[name]}")
                ok = False
            elif out.dtype != np.float32:
                report.add(_out(name), f"dtype {out.dtype}, expected float32")
                ok = False
            elif not np.isfinite(out).all():
                report.add(_out(name), f"batch {b}, sequence {t}: non-finite values from a zero state")
                ok = False
        if not ok:
            return False
    return True


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=ATOL, rtol=ATOL))


def _check_state(runner: _Runner, report: Report) -> None:
    """The state goes in through h0, c0 and comes out as hn, cn; pieces carried through it equal a whole run;
    rows of a batch do not mix."""
    b, t = 2, sum(CHUNKS)
    ids, h0, c0 = runner.ids(b, t), runner.state(b, 0.5), runner.state(b, 0.5)
    logits, hn, cn = runner.run(ids, h0, c0)
    for name, out, fed in (("hn", hn, "h0"), ("cn", cn, "c0")):
        if _close(out, h0 if fed == "h0" else c0):  # float32 closeness: an int8 state still moves
            report.add(_out(name), f"equals {fed} after {t} tokens: the state does not advance")
    zero = runner.state(b)
    for name, feeds in (("h0", (ids, zero, c0)), ("c0", (ids, h0, zero))):
        other = runner.run(*feeds)
        if all(_close(x, y) for x, y in zip(other, (logits, hn, cn), strict=True)):
            report.add(_inp(name), "is ignored: the outputs are the same whatever state is fed")
    parts, h, c, start = [], h0, c0, 0
    for n in CHUNKS:
        piece, h, c = runner.run(ids[:, start : start + n], h, c)
        parts.append(piece)
        start += n
    chunked = np.concatenate(parts, axis=1)
    how = f"{t} tokens fed in pieces of {', '.join(map(str, CHUNKS))} with hn, cn fed back as h0, c0"
    for name, got, want in (("hn", h, hn), ("cn", c, cn), ("logits", chunked, logits)):
        if not runner.close(got, want):
            report.add(
                _out(name),
                f"{how} differ from the same tokens fed at once by {_max_diff(got, want):.3g}: "
                "the state is not carried (hn, cn must be the state after the last token)",
            )
    one_l, one_h, one_c = runner.run(ids[1:], h0[:, 1:], c0[:, 1:])
    for name, alone, batched in (("logits", one_l, logits[1:]), ("hn", one_h, hn[:, 1:]), ("cn", one_c, cn[:, 1:])):
        if not runner.close(alone, batched):
            report.add(
                _out(name),
                f"row 1 of a batch of 2 differs from the same row run alone by {_max_diff(alone, batched):.3g}: "
                "rows of a batch (different sessions) must not mix",
            )


def _check_head(proto: onnx.ModelProto, runner: _Runner, report: Report) -> None:
    """logits = Add(MatMul(y, W), b) with initializers W (H, V), b (V,), applied to the top layer's h."""
    why = "generation that continues a session runs the output layer alone on the stored top-layer h"
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    add = producers.get("logits")
    matmul = producers.get(add.input[0]) if add is not None and add.op_type == "Add" else None
    if add is None or matmul is None or matmul.op_type != "MatMul" or matmul.input[1] not in inits:
        report.add(_out("logits"), f"must be Add(MatMul(y, W), b) with W and b initializers ({why})")
        return
    if add.input[1] not in inits:
        report.add(_out("logits"), f"the bias {add.input[1]!r} of the final Add is not an initializer ({why})")
        return
    cfg = runner.config
    w, bias = numpy_helper.to_array(inits[matmul.input[1]]), numpy_helper.to_array(inits[add.input[1]])
    if w.shape != (cfg.hidden_size, cfg.vocab_size) or bias.shape != (cfg.vocab_size,):
        report.add(
            _out("logits"),
            f"the output layer's W {w.shape} and b {bias.shape} must be ({cfg.hidden_size}, {cfg.vocab_size}) and "
            f"({cfg.vocab_size},) ({why})",
        )
        return
    ids, h0, c0 = runner.ids(2, 3), runner.state(2, 0.5), runner.state(2, 0.5)
    logits, hn, _ = runner.run(ids, h0, c0)
    head = hn[-1].astype(np.float64) @ w.astype(np.float64) + bias
    if not np.allclose(head, logits[:, -1], atol=1e-3, rtol=1e-3):
        report.add(
            _out("logits"),
            f"the last step's logits differ by {_max_diff(head, logits[:, -1]):.3g} from W, b applied to the top "
            f"layer of hn ({why})",
        )


def _check_reference(path: Path, runner: _Runner, report: Report) -> None:
    """Gate inspection recomputes the model from its weights: it must load them and agree with ONNX Runtime."""
    from model.quantize import load_reference  # float files: ReferenceLSTM.from_onnx; int8: weights dequantized

    why = "gate inspection (/v1/inspect) recomputes every gate from the weights"
    try:
        reference = load_reference(path)
    except (KeyError, IndexError, ValueError) as exc:
        missing = f"initializer {exc}" if isinstance(exc, KeyError) else str(exc)
        report.add(
            "graph",
            f"{why}: needs one ONNX LSTM operator per layer with W, R, B initializers and initializers "
            f"{', '.join(HEAD_INITIALIZERS)}; {missing}",
        )
        return
    ids, h0, c0 = runner.ids(2, 5), runner.state(2, 0.5), runner.state(2, 0.5)
    got = runner.run(ids, h0, c0)
    want = reference.run(ids, h0, c0)[:3]
    for name, a, b in zip(OUTPUT_NAMES, got, want, strict=True):
        if a.shape != b.shape or _max_diff(a, b) > runner.inspect_tolerance:
            diff = "shape " + str(b.shape) if a.shape != b.shape else f"by {_max_diff(a, b):.3g}"
            report.add(
                _out(name),
                f"differs from the gate equations computed on the file's weights ({diff}): {why}, "
                "so the graph must be the standard LSTM the weights describe",
            )


def format_report(report: Report) -> str:
    """What `lstm-serve check-model` prints."""
    if report.ok:
        m = report.metadata
        what = (
            ""
            if m is None
            else (
                f" as {m.name} v{m.version} ({m.config.num_layers} x {m.config.hidden_size}, "
                f"{m.config.vocab_size} characters, {m.fingerprint})"
            )
        )
        return f"{report.path}: OK, lstm-serve will serve it{what}"
    lines = [f"{report.path}: {len(report.problems)} problem{'s' if len(report.problems) != 1 else ''}"]
    lines += [f"  {p}" for p in report.problems]
    lines += [f"  ({n})" for n in report.notes]
    return "\n".join(lines)
