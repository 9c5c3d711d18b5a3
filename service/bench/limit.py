"""Scenario 1, the limit: raw ONNX Runtime in-process, the ceiling every served figure is a fraction of.

One step = one `session.run` of one token per row at batch B, from the states the previous step returned, with
the server's own session options (service/engine/ort.py). Nothing else: no HTTP, no batching logic, no
state gather/scatter, no sampling. Scenario 8 (GPU) is here too: the same steps on the CUDA provider, plain
(every state crosses PCIe twice per step) against I/O binding (states stay on the device, only the ids go up
and the logits come down).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.engine.ort import CUDA, OnnxRuntime

ROUNDS = 6  # turns each artifact takes at each batch size in `cpu_limits`


def timed(fn: Callable[[], object], budget_s: float, min_calls: int = 5) -> list[float]:
    """Call `fn` until `budget_s` is spent (at least `min_calls` times); the duration of each call."""
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < min_calls or time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def step_stats(times: Sequence[float], rows: int) -> dict[str, float]:
    med = float(np.median(times))
    return {
        "step_ms": med * 1000,
        "mean_ms": float(np.mean(times)) * 1000,
        "tokens_per_s": rows / med,
        "calls": len(times),
    }


def cpu_limit(
    model: Path, batches: Sequence[int], budget_s: float, intra_op_threads: int = 1, prompt_chars: int = 1000
) -> dict[str, Any]:
    """Step time at each batch size and one prompt of `prompt_chars` characters in one call."""
    rt = OnnxRuntime(model, "cpu", intra_op_threads=intra_op_threads, next_token=False)  # the graph as exported
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"provider": "cpu", "intra_op_threads": intra_op_threads, "batches": []}
    for b in batches:
        ids = rng.integers(0, rt.vocab_size, size=(b, 1), dtype=np.int64)  # (B, 1)
        state = [np.zeros((rt.layers, b, rt.hidden), dtype=np.float32)] * 2  # h, c (L, B, H)

        def step(ids: np.ndarray = ids, state: list[np.ndarray] = state) -> None:
            _, state[0], state[1] = rt.run(ids, state[0], state[1])

        for _ in range(3):  # let ORT allocate for this shape before timing it
            step()
        out["batches"].append({"batch": b, **step_stats(timed(step, budget_s), b)})
    if prompt_chars:
        ids = rng.integers(0, rt.vocab_size, size=(1, prompt_chars), dtype=np.int64)
        zeros = np.zeros((rt.layers, 1, rt.hidden), dtype=np.float32)
        rt.run(ids, zeros, zeros)
        times = timed(lambda: rt.run(ids, zeros, zeros), budget_s, min_calls=3)
        med = float(np.median(times))
        out["prompt"] = {
            "chars": prompt_chars,
            "ms": med * 1000,
            "chars_per_s": prompt_chars / med,
            "per_char_us": med / prompt_chars * 1e6,
            "calls": len(times),
        }
    return out


def cpu_limits(
    models: dict[str, Path],
    batches: Sequence[int],
    budget_s: float,
    intra_op_threads: int = 1,
    rounds: int = ROUNDS,
) -> dict[str, dict[str, Any]]:
    """Several artifacts (fp32, int8) measured side by side. At each batch size the artifacts take turns in
    `rounds` short slices of the budget and each one's median is over all its slices, so drift on a shared machine
    (another process waking up for a second) hits them alike instead of landing on one artifact's whole window;
    the prompt ingestion of each after the steps."""
    runtimes = {
        name: OnnxRuntime(path, "cpu", intra_op_threads=intra_op_threads, next_token=False)
        for name, path in models.items()
    }
    out: dict[str, dict[str, Any]] = {
        name: {"provider": "cpu", "intra_op_threads": intra_op_threads, "batches": [], "model": str(path)}
        for name, path in models.items()
    }
    for b in batches:
        steps = {name: _stepper(rt, b) for name, rt in runtimes.items()}
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(rounds):
            for name, step in steps.items():
                times[name] += timed(step, budget_s / rounds)
        for name in models:
            out[name]["batches"].append({"batch": b, **step_stats(times[name], b), "rounds": rounds})
    for name, path in models.items():
        out[name]["prompt"] = cpu_limit(path, (), budget_s, intra_op_threads)["prompt"]
    return out


def _stepper(rt: OnnxRuntime, batch: int) -> Callable[[], None]:
    """One token per row at `batch`, from the states the previous step returned (warmed up for the shape)."""
    ids = np.random.default_rng(0).integers(0, rt.vocab_size, size=(batch, 1), dtype=np.int64)  # (B, 1)
    state = [np.zeros((rt.layers, batch, rt.hidden), dtype=np.float32)] * 2  # h, c (L, B, H)

    def step() -> None:
        _, state[0], state[1] = rt.run(ids, state[0], state[1])

    for _ in range(3):  # let ORT allocate for this shape before timing it
        step()
    return step


def gpu_status() -> str | None:
    """None when the CUDA provider can run here; otherwise why scenario 8 is not run."""
    if CUDA not in ort.get_available_providers():
        return "not run: no GPU (this onnxruntime build has no CUDAExecutionProvider)"
    return None


def gpu_limit(model: Path, batches: Sequence[int], budget_s: float) -> dict[str, Any]:
    """Scenario 8: CUDA steps plain against I/O binding, and what the state copies cost per step."""
    status = gpu_status()
    if status is not None:
        return {"status": status}
    sess = ort.InferenceSession(str(model), providers=[CUDA, "CPUExecutionProvider"])
    if sess.get_providers()[0] != CUDA:
        return {"status": "not run: the CUDA provider failed to load (no device or CUDA libraries)"}
    shape = sess.get_inputs()[1].shape  # [layers, "batch", hidden]
    layers, hidden = int(shape[0]), int(shape[2])
    vocab = int(sess.get_outputs()[0].shape[2])
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for b in batches:
        ids = rng.integers(0, vocab, size=(b, 1), dtype=np.int64)
        host = [np.zeros((layers, b, hidden), dtype=np.float32)] * 2

        def plain(ids: np.ndarray = ids, host: list[np.ndarray] = host) -> None:
            _, host[0], host[1] = sess.run(None, {"input_ids": ids, "h0": host[0], "c0": host[1]})

        dev = [
            ort.OrtValue.ortvalue_from_numpy(np.zeros((layers, b, hidden), np.float32), "cuda", 0) for _ in range(4)
        ]  # h, c in; hn, cn out: swapped after every step
        binding = sess.io_binding()

        def bound(ids: np.ndarray = ids, dev: list[ort.OrtValue] = dev, binding: ort.IOBinding = binding) -> None:
            binding.bind_cpu_input("input_ids", ids)
            binding.bind_ortvalue_input("h0", dev[0])
            binding.bind_ortvalue_input("c0", dev[1])
            binding.bind_output("logits", "cpu")  # sampling runs on the host
            binding.bind_ortvalue_output("hn", dev[2])
            binding.bind_ortvalue_output("cn", dev[3])
            sess.run_with_iobinding(binding)
            binding.get_outputs()[0].numpy()
            dev[0], dev[1], dev[2], dev[3] = dev[2], dev[3], dev[0], dev[1]

        for fn in (plain, bound):
            for _ in range(3):
                fn()
        p = step_stats(timed(plain, budget_s), b)
        q = step_stats(timed(bound, budget_s), b)

        def download(dev: list[ort.OrtValue] = dev) -> None:
            dev[0].numpy(), dev[1].numpy()

        copy = timed(download, budget_s / 4)
        rows.append(
            {
                "batch": b,
                "plain": p,
                "io_binding": q,
                "speedup": p["step_ms"] / q["step_ms"],
                "state_download_ms": float(np.median(copy)) * 1000,
            }
        )
    return {"status": "ok", "device": ort.get_device(), "batches": rows}
