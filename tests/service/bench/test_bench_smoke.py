"""The benchmark works: `lstm-serve bench --short` runs every scenario against real server processes and writes
the report, results and plots. Speed is not asserted here (that is what the full run's report is for)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.bench.profile import summarise
from service.bench.targets import evaluate
from service.cli import main

pytestmark = pytest.mark.e2e

PLOTS = ("predict.png", "stream.png", "memory.png", "steps.png")


def test_short_bench_writes_report_results_and_plots(tiny_model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    assert main(["bench", "--short", "--out", str(out), "--model", str(tiny_model_path)]) == 0
    results = json.loads((out / "results.json").read_text())
    for scenario in ("limit", "predict", "resend", "stream", "steps", "memory", "optimisations", "gpu"):
        assert scenario in results, scenario
    assert [r["batch"] for r in results["limit"]["batches"]] == [1, 16]
    for name in ("main", "off", "noop", "torch"):
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
    assert {t["name"] for t in results["targets"]} >= {"memory", "step_cost", "vs_torch_throughput"}
    assert all(t["met"] in (True, False, None) for t in results["targets"])
    report = (out / "README.md").read_text()
    assert "## Targets" in report and "Short mode" in report and "lstm-serve bench --short" in report
    for plot in PLOTS:
        if plot != "stream.png" or "status" not in stream:
            assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
            assert f"]({plot})" in report


def test_torch_baseline_computes_the_served_model(tiny_model_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from service.bench.baselines import torch_model_from_onnx
    from service.engine.runtime import OnnxRuntime

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
