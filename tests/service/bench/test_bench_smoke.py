"""The benchmark works: `lstm-serve bench --short` runs every scenario against real server processes and writes
the report, results and plots. Speed is not asserted here (that is what the full run's report is for).

The short run is made once (module fixture) on a copy of the tiny model with an int8 sibling, so the raw
ONNX Runtime figures of both precisions are taken side by side; predict is driven by wrk and streams by curl.
Without wrk (or curl) those points fall back to the Python client: their tests skip, except in CI (CI set),
where `make test` installs wrk and they must run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.bench import curl_sse, wrk
from service.bench.profile import summarise
from service.bench.targets import evaluate
from service.cli import main

pytestmark = pytest.mark.e2e

PLOTS = ("predict.png", "stream.png", "memory.png", "steps.png")
HAS_LITSERVE = importlib.util.find_spec("litserve") is not None


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} must be installed in CI (make system-deps)")
        pytest.skip(f"{tool} is not installed (apt-get install {tool}; make system-deps installs it)")


@pytest.fixture(scope="module")
def short_run(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from model.quantize import int8_path, quantize_model

    models = tmp_path_factory.mktemp("bench-models")
    fp32 = models / "tiny.onnx"
    shutil.copy(tiny_model_path, fp32)
    quantize_model(fp32, int8_path(fp32))
    out = tmp_path_factory.mktemp("bench") / "out"
    assert main(["bench", "--short", "--out", str(out), "--model", str(fp32)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_short_bench_writes_report_results_and_plots(short_run: tuple[Path, dict[str, Any]]) -> None:
    out, results = short_run
    for scenario in ("limit", "predict", "resend", "stream", "steps", "memory", "optimisations", "gpu", "fairness"):
        assert scenario in results, scenario
    assert "durable" in results
    assert [r["batch"] for r in results["limit"]["batches"]] == [1, 16]
    for name in ("main", "off", "noop", "torch", *(("litserve",) if HAS_LITSERVE else ())):
        points = results["predict"][name]
        assert [p["concurrency"] for p in points] == [1, 16]
        assert all(p["completed"] > 0 and p["errors"] == 0 for p in points), (name, points)
    assert results["resend"]["completed"] > 0 and results["resend"]["errors"] == 0
    stream = results["stream"]
    if "status" not in stream:  # the streaming endpoint exists: every stream produced tokens
        assert all(p["tokens_per_s"] > 0 and p["errors"] == 0 for p in stream["main"] + stream["off"])
    assert [r["position"] for r in results["steps"]["stateful"]] == [10, 1000]
    assert [p["sessions"] for p in results["memory"]["points"]] == [1000, 10000]
    assert results["gpu"]["status"] == "ok" or results["gpu"]["status"].startswith("not run")
    fair = results["fairness"]
    assert fair["main"]["short_requests"] > 0 and fair["unchunked"]["short_requests"] > 0
    assert "## 10. Fair scheduling" in (out / "README.md").read_text()
    durable = results["durable"]["points"]
    assert [(p["kind"], p["concurrency"]) for p in durable] == [("predict", 1), ("predict", 16), ("stream", 1)]
    for p in durable:
        for name in ("main", "durable"):
            assert p[name]["throughput"] > 0 and p[name]["point"]["errors"] == 0, (name, p)
        assert p["ratio_durable_off"]["throughput"] > 0, p
    assert "--durable --snapshot-path $TMPDIR/" in results["meta"]["servers"]["durable"]
    assert "## 11. Durable mode" in (out / "README.md").read_text()
    names = {t["name"] for t in results["targets"]}
    assert names >= {"predict_1_p50", "predict_16_throughput", "stream_1_vs_limit", "stream_16_vs_limit"}
    assert names >= {"vs_litserve_throughput", "vs_litserve_p99", "int8_speed_1", "int8_speed_16", "int8_loss"}
    assert names >= {"memory", "step_cost"}
    assert all(t["met"] in (True, False, None) for t in results["targets"])
    report = (out / "README.md").read_text()
    assert "## Targets" in report and "Short mode" in report and "lstm-serve bench --short" in report
    for plot in PLOTS:
        if plot != "stream.png" or "status" not in stream:
            assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
            assert f"]({plot})" in report


def test_raw_onnx_runtime_of_fp32_and_int8_side_by_side(short_run: tuple[Path, dict[str, Any]]) -> None:
    out, results = short_run
    both = results["limit"]["by_precision"]
    assert set(both) == {"fp32", "int8"}
    for rows in (both["fp32"]["batches"], both["int8"]["batches"]):
        assert [r["batch"] for r in rows] == [1, 16] and all(r["tokens_per_s"] > 0 for r in rows)
    assert set(results["meta"]["artifacts"]) == {"fp32", "int8"}
    served = results["limit"]["served"]
    assert served == results["meta"]["precision"] and both[served]["batches"] == results["limit"]["batches"]
    speed = {t["name"]: t for t in results["targets"]}["int8_speed_1"]
    assert speed["value"] is not None and speed["value"] > 0
    report = (out / "README.md").read_text()
    assert "fp32 tokens/s" in report and "int8 tokens/s" in report and "int8 / fp32" in report


def test_predict_points_are_driven_by_wrk(short_run: tuple[Path, dict[str, Any]]) -> None:
    _need("wrk")
    _, results = short_run
    for name, points in results["predict"].items():
        for p in points:
            assert p["client"] == "wrk", (name, p)
            assert (
                p["throughput"] > 0 and p["latency_ms"]["p50"] > 0 and p["latency_ms"]["p99"] >= p["latency_ms"]["p50"]
            )
            assert p["wrk_command"].startswith(f"wrk -t {p['concurrency']} -c {p['concurrency']} ")
            assert "--latency" in p["wrk_command"]
    assert "wrk" in results["meta"]["machine"]["clients"]


def test_stream_points_are_driven_by_curl(short_run: tuple[Path, dict[str, Any]]) -> None:
    _need("curl")
    _, results = short_run
    stream = results["stream"]
    assert "status" not in stream, stream
    for name in ("noop", "main", "off"):
        points = stream[name]
        assert [p["concurrency"] for p in points] == [1, 16], name
        for p in points:
            assert p["client"] == "curl --parallel", (name, p)
            assert p["streams"] == p["concurrency"] and p["errors"] == 0, (name, p)
            assert all(k > 0 for k in p["tokens_per_stream"]), (name, p)
    limit = {t["name"]: t for t in results["targets"]}["stream_1_vs_limit"]
    assert limit["value"] is not None and "no-op SSE" in limit["detail"]


def test_wrk_conns_file_gives_each_connection_its_own_session(tmp_path: Path) -> None:
    conns = [wrk.Conn(f"/v1/sessions/s{i}/predict", wrk.bodies('ab\n"', seed=1, index=i, n=3)) for i in range(2)]
    path = tmp_path / "conns.lua"
    wrk.write_conns(conns, path)
    text = path.read_text()
    assert text.startswith("return {") and "/v1/sessions/s0/predict" in text and "/v1/sessions/s1/predict" in text
    assert conns[0].bodies == wrk.bodies('ab\n"', seed=1, index=0, n=3)  # seeded: a rerun sends the same
    for body in conns[0].bodies:
        assert json.loads(body)["text"] in 'ab\n"'
        assert f"[===[{body}]===]" in text  # Lua long strings: the JSON travels byte for byte
    raw = {
        "requests": 200,
        "duration_us": 2_000_000,
        "bytes": 1,
        "errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0},
        "latency_us": {
            "min": 100,
            "max": 900,
            "mean": 300.0,
            "stdev": 1.0,
            "percentiles": {"50": 250, "90": 500, "99": 800, "99.9": 900},
        },
        "wall_s": 2.0,
        "cpu_s": 0.2,
        "command": "wrk -t 2 -c 2",
    }
    point = wrk.summary(raw, 2)
    assert point["throughput"] == 100.0 and point["latency_ms"]["p50"] == 0.25 and point["load_cpu_share"] == 0.1


def test_curl_config_and_token_count(tmp_path: Path) -> None:
    cfg = curl_sse.config(["http://h/v1/sessions/a/generate"], ['{"stream": true}'], tmp_path, 1.5)
    assert 'data = "{\\"stream\\": true}"' in cfg and "max-time = 1.500" in cfg and "write-out" in cfg
    events = b'data: {"token":"a","id":1,"position":3}\r\n\r\ndata: {"token": "b"}\r\n\r\n'
    final = b'data: {"text":"ab","tokens":[1,2],"finish_reason":"length","position":4}\r\n\r\ndata: [DONE]\r\n\r\n'
    assert curl_sse.count(events + final) == (2, 0)


def test_torch_baseline_computes_the_served_model(tiny_model_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from service.bench.baselines import torch_model_from_onnx
    from service.engine.ort import OnnxRuntime

    model, tokenizer = torch_model_from_onnx(tiny_model_path)
    rt = OnnxRuntime(tiny_model_path, "cpu")
    ids = tokenizer.encode("To be, or not to be")[None]  # (1, T)
    zeros = np.zeros((rt.layers, 1, rt.hidden), dtype=np.float32)
    logits, hn, cn = rt.run(ids, zeros, zeros)
    h0, c0 = model.zero_state(1)
    with torch.inference_mode():
        t_logits, t_hn, t_cn = model(torch.from_numpy(ids), h0, c0, fused=True)
    np.testing.assert_allclose(t_logits.numpy(), logits, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(t_hn.numpy(), hn, atol=1e-5)
    np.testing.assert_allclose(t_cn.numpy(), cn, atol=1e-5)


def test_profile_summary_groups_samples_by_component(tmp_path: Path) -> None:
    raw = tmp_path / "stacks.txt"
    raw.write_text(
        "thread (1): MainThread;main (service/cli.py:1);run (onnxruntime/capi/x.py:2) 3\n"
        "thread (1): MainThread;main (service/cli.py:1);top_k (service/engine/topk.py:9) 1\n"
    )
    summary = summarise(raw)
    assert summary["samples"] == 4
    assert summary["self"][0] == {"frame": "run (x.py)", "share": 0.75}
    assert {c["frame"]: c["share"] for c in summary["components"]} == {
        "ONNX Runtime run": 0.75,
        "sampling and top-k": 0.25,
    }


def test_targets_missing_figures_are_not_evaluated() -> None:
    targets = evaluate({"limit": {"batches": []}}, compare_at=64)
    assert targets and all(t["met"] is None for t in targets)
