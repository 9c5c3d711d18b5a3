"""`check-model` names each defect of deliberately broken files, and passes the files lstm-serve writes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from model.config import ModelConfig
from model.contract import Report, check_model, format_report
from model.paths import BUNDLED_MODEL
from service.cli import main


def _broken(src: Path, tmp_path: Path, name: str, edit: Callable[[onnx.ModelProto], None]) -> Path:
    proto = onnx.load(str(src))
    edit(proto)
    out = tmp_path / f"{name}.onnx"
    onnx.save(proto, str(out))
    return out


def _props(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def _set_props(proto: onnx.ModelProto, props: dict[str, str]) -> None:
    del proto.metadata_props[:]
    helper.set_model_props(proto, props)


def _rename_input(proto: onnx.ModelProto, old: str, new: str) -> None:
    for value in proto.graph.input:
        if value.name == old:
            value.name = new
    for node in proto.graph.node:
        node.input[:] = [new if i == old else i for i in node.input]


def _reroute_output(proto: onnx.ModelProto, output: str, node: onnx.NodeProto) -> None:
    """Rename what produced `output` to `output`_orig and let `node` produce `output` instead."""
    for n in proto.graph.node:
        n.output[:] = [f"{output}_orig" if o == output else o for o in n.output]
        n.input[:] = [f"{output}_orig" if i == output else i for i in n.input]
    proto.graph.node.append(node)


def wrong_input_name(p: onnx.ModelProto) -> None:
    _rename_input(p, "h0", "state_h")


def wrong_dtype(p: onnx.ModelProto) -> None:
    p.graph.input[0].type.tensor_type.elem_type = TensorProto.INT32  # Gather takes int32 indices too


def missing_fingerprint(p: onnx.ModelProto) -> None:
    _set_props(p, {k: v for k, v in _props(p).items() if k != "fingerprint"})


def fixed_batch_axis(p: onnx.ModelProto) -> None:
    dim = p.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 1


def state_not_carried(p: onnx.ModelProto) -> None:
    _reroute_output(p, "hn", helper.make_node("Identity", ["h0"], ["hn"]))  # hn = h0: the state never moves


def initial_state_ignored(p: onnx.ModelProto) -> None:
    for node in p.graph.node:
        if node.op_type == "LSTM":
            node.input[5] = ""  # no initial_h: every call starts from zero


def rows_mixed(p: onnx.ModelProto) -> None:
    p.graph.initializer.append(helper.make_tensor("axes0", TensorProto.INT64, [1], [0]))
    _reroute_output(p, "logits", helper.make_node("Add", ["logits_orig", "batch_mean"], ["logits"]))
    p.graph.node.append(helper.make_node("ReduceMean", ["logits_orig", "axes0"], ["batch_mean"], keepdims=1))
    p.opset_import[0].version = 18  # ReduceMean's axes as an input


def head_not_matmul_add(p: onnx.ModelProto) -> None:
    _reroute_output(p, "logits", helper.make_node("Identity", ["logits_orig"], ["logits"]))


def config_layers_wrong(p: onnx.ModelProto) -> None:
    props = _props(p)
    cfg = ModelConfig.from_json(props["config"])
    props["config"] = ModelConfig(**{**cfg.__dict__, "num_layers": cfg.num_layers + 1}).to_json()
    _set_props(p, props)


def vocab_too_short(p: onnx.ModelProto) -> None:
    props = _props(p)
    props["vocab"] = '"abc"'
    _set_props(p, props)


def bad_val_loss(p: onnx.ModelProto) -> None:
    _set_props(p, {**_props(p), "val_loss": "low"})


def extra_output(p: onnx.ModelProto) -> None:
    p.graph.output.append(helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", "seq", 8]))


def weights_as_inputs(p: onnx.ModelProto) -> None:
    """The output layer's weight fed by an Identity: ONNX Runtime runs it, but the head is no longer MatMul(y, W)
    of an initializer, and the reference cannot find `head_w`."""
    for t in p.graph.initializer:
        if t.name == "head_w":
            t.name = "head_w_raw"
    p.graph.node.insert(0, helper.make_node("Identity", ["head_w_raw"], ["head_w"]))


DEFECTS: list[tuple[Callable[[onnx.ModelProto], None], str, str]] = [
    (wrong_input_name, "input 'h0'", "missing"),
    (wrong_input_name, "input 'state_h'", "not part of the contract"),
    (wrong_dtype, "input 'input_ids'", "tensor(int32), expected tensor(int64)"),
    (missing_fingerprint, "metadata 'fingerprint'", "missing"),
    (fixed_batch_axis, "input 'input_ids'", "axis 0 (batch) is fixed at 1"),
    (state_not_carried, "output 'hn'", "the state does not advance"),
    (state_not_carried, "output 'logits'", "the state is not carried"),
    (initial_state_ignored, "input 'h0'", "is ignored"),
    (rows_mixed, "output 'logits'", "must not mix"),
    (head_not_matmul_add, "output 'logits'", "Add(MatMul(y, W), b)"),
    (config_layers_wrong, "input 'h0'", "axis 0 (layers) is 2, but metadata 'config' says layers 3"),
    (vocab_too_short, "metadata 'vocab'", "has 3 characters but metadata 'config' says"),
    (bad_val_loss, "metadata 'val_loss'", "is not a number"),
    (extra_output, "output 'emb'", "not part of the contract"),
    (weights_as_inputs, "output 'logits'", "Add(MatMul(y, W), b)"),
    (weights_as_inputs, "graph", "initializer 'head_w'"),
]


@pytest.mark.parametrize(
    ("edit", "subject", "words"), DEFECTS, ids=[f"{e.__name__}-{s.split()[0]}" for e, s, _ in DEFECTS]
)
def test_each_defect_is_named(
    edit: Callable[[onnx.ModelProto], None], subject: str, words: str, tiny_model_path: Path, tmp_path: Path
) -> None:
    report = check_model(_broken(tiny_model_path, tmp_path, edit.__name__, edit))
    assert not report.ok
    named = [p for p in report.problems if p.subject == subject]
    assert named, format_report(report)
    assert any(words in p.message for p in named), format_report(report)


def test_every_problem_is_reported_not_just_the_first(tiny_model_path: Path, tmp_path: Path) -> None:
    def many(p: onnx.ModelProto) -> None:
        wrong_dtype(p)
        missing_fingerprint(p)
        fixed_batch_axis(p)
        p.graph.input[1].type.tensor_type.shape.dim[1].Clear()
        p.graph.input[1].type.tensor_type.shape.dim[1].dim_value = 4  # h0's batch axis fixed too

    report = check_model(_broken(tiny_model_path, tmp_path, "many", many))
    assert {"input 'input_ids'", "metadata 'fingerprint'", "input 'h0'"} <= set(report.subjects())
    assert sum(s == "input 'input_ids'" for s in report.subjects()) == 2  # the dtype and the fixed axis
    assert any("runs skipped" in n for n in report.notes)


def test_not_an_onnx_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"these are not the weights you are looking for")
    report = check_model(junk)
    assert report.subjects() == ["file"]


def _assert_ok(report: Report) -> None:
    assert report.ok, format_report(report)
    assert report.metadata is not None


def test_tiny_models_pass(tiny_model_path: Path, tiny_peephole_model_path: Path) -> None:
    _assert_ok(check_model(tiny_model_path))
    _assert_ok(check_model(tiny_peephole_model_path))


def test_the_bundled_model_passes() -> None:
    _assert_ok(check_model(BUNDLED_MODEL))


def test_int8_files_pass_within_their_quantization_and_broken_ones_still_fail(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    from model.quantize import BUNDLED_INT8_MODEL, quantize_model

    _assert_ok(check_model(BUNDLED_INT8_MODEL))
    int8 = tmp_path / "tiny.int8.onnx"
    quantize_model(tiny_model_path, int8)
    report = check_model(int8)
    _assert_ok(report)
    assert any("int8 file" in n for n in report.notes)
    broken = check_model(_broken(int8, tmp_path, "int8-stuck", state_not_carried))
    assert "output 'hn'" in broken.subjects() and "output 'logits'" in broken.subjects()


def test_cli_exit_codes_and_output(tiny_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-model", str(tiny_model_path)]) == 0
    assert "OK, lstm-serve will serve it as tiny-test-lstm v0" in capsys.readouterr().out

    def two(p: onnx.ModelProto) -> None:
        wrong_input_name(p)
        missing_fingerprint(p)

    broken = _broken(tiny_model_path, tmp_path, "two", two)
    assert main(["check-model", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "metadata 'fingerprint': missing" in out and "input 'h0': missing" in out
    assert main(["check-model", str(tmp_path / "absent.onnx")]) == 2
    assert "no such file" in capsys.readouterr().err
