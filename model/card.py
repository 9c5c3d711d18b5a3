"""The model card written beside the exported artifact, and the seeded sample it shows."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from model.config import ModelConfig
from model.corpus import CORPUS_NAME, VALIDATION_PLAYS
from model.evaluate import Evaluation
from model.onnx_meta import ModelMetadata


def sample_text(path: Path, prompt: str, length: int = 400, temperature: float = 0.8, seed: int = 7) -> str:
    """Continue `prompt` through ONNX Runtime, one character per call, carrying h and C."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_props(sess.get_modelmeta().custom_metadata_map)
    rng = np.random.default_rng(seed)
    shape = (meta.config.num_layers, 1, meta.config.hidden_size)
    h, c = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    ids = meta.tokenizer.encode(prompt)[None]  # (1, T)
    out = []
    for _ in range(length):
        logits, h, c = sess.run(None, {"input_ids": ids, "h0": h, "c0": c})
        z = logits[0, -1].astype(np.float64) / temperature
        p = np.exp(z - z.max())
        nxt = int(rng.choice(len(p), p=p / p.sum()))
        out.append(nxt)
        ids = np.array([[nxt]], dtype=np.int64)
    return prompt + meta.tokenizer.decode(out)


def write_card(
    path: Path, model_path: Path, meta: ModelMetadata, evaluation: Evaluation, train_meta: dict[str, Any]
) -> None:
    cfg = meta.config
    tc = train_meta.get("train_config", {})
    params = cfg.vocab_size * cfg.embed_size + cfg.hidden_size * cfg.vocab_size + cfg.vocab_size
    for layer in range(cfg.num_layers):
        fan_in = cfg.embed_size if layer == 0 else cfg.hidden_size
        params += 4 * cfg.hidden_size * (fan_in + cfg.hidden_size + 1)
        params += 3 * cfg.hidden_size if cfg.peephole else 0
    state_bytes = 2 * cfg.num_layers * cfg.hidden_size * 4
    corpus = train_meta.get("corpus") or {}
    own = _own_text(corpus, evaluation, train_meta, cfg) if corpus.get("source") == "text" else None
    sample = sample_text(model_path, own["prompt"] if own else "ROMEO:\n")
    subject = own["subject"] if own else "Shakespeare's plays"
    history = "\n".join(
        f"| {r['step']} | {r['train_loss']:.3f} | {r['val_loss']:.3f} | {r['minutes']:.1f} |"
        for r in train_meta.get("history", [])
    )
    text = f"""# Model card: {meta.name} v{meta.version}

A character-level LSTM language model of {subject}: the cell of the LSTM notes (forget, input and
output gates, tanh candidate, C_t = f*C_(t-1) + i*c~, h_t = o*tanh(C_t)){" with peepholes" if cfg.peephole else ""},
stacked {cfg.num_layers} layers deep, exported to ONNX with one standard `LSTM` operator per layer.

| | |
|---|---|
| file | `{model_path.name}` ({model_path.stat().st_size / 1e6:.1f} MB) |
| fingerprint | `{meta.fingerprint}` |
| layers x hidden | {cfg.num_layers} x {cfg.hidden_size} (embedding {cfg.embed_size}, peephole {cfg.peephole}) |
| parameters | {params:,} |
| vocabulary | {cfg.vocab_size} characters |
| state per session | h and C: 2 x {cfg.num_layers} x {cfg.hidden_size} float32 = {state_bytes:,} bytes |

## Data
{CORPUS_NAME}: every play as markdown, turned into plain play text (`NAME:` on its own line, then the speech;
stage directions, headings and markdown removed; em dashes written `--`). Validation holds out whole plays,
never characters from inside a play: {", ".join(VALIDATION_PLAYS)} ({evaluation.characters:,} characters
scored). Training uses the other plays.

## Training
Truncated back-propagation through time over {tc.get("batch_size")} parallel streams of the text, windows of
{tc.get("seq_len")} characters with the state carried between windows; AdamW (lr {tc.get("lr")}, weight decay
{tc.get("weight_decay")}), linear warm-up then cosine decay, gradient norm clipped at {tc.get("clip_norm")}, seed
{tc.get("seed")}, {tc.get("steps")} steps. Best checkpoint at step {train_meta.get("best_step")}.
Training took {train_meta.get("train_minutes", 0):.1f} minutes on {train_meta.get("device")}
({train_meta.get("machine")}), torch {train_meta.get("torch")}.

| step | train loss (running) | validation loss (PyTorch) | minutes |
|---|---|---|---|
{history}

Reproduce: `lstm-serve train --steps {tc.get("steps")} --hidden-size {cfg.hidden_size} --layers {cfg.num_layers}
--embed-size {cfg.embed_size}{" --peephole" if cfg.peephole else ""} --out build/shakespeare-lstm.pt` then
`lstm-serve export --checkpoint build/shakespeare-lstm.pt`.

## Validation loss (ONNX Runtime, `lstm-serve evaluate`)
**{evaluation.nats_per_char:.4f} nats per character = {evaluation.bits_per_char:.4f} bits per character**
(perplexity {math.exp(evaluation.nats_per_char):.2f}) on the held-out plays.

## Sample (prompt `ROMEO:`, temperature 0.8, seed 7)
```
{sample}
```

## Limitations
- Character level and small: it learns spelling, metre, speaker headings and local syntax, not meaning; long
  passages wander.
- Only the characters of its vocabulary can be fed; anything else is an error, never silently dropped.
- Trained on Early Modern English plays only; it knows nothing else and should not be used to generate text
  presented as Shakespeare's own.
"""
    if own:
        text = _retarget(text, own)
    path.write_text(text)


def _own_text(
    corpus: dict[str, Any], evaluation: Evaluation, train_meta: dict[str, Any], cfg: ModelConfig
) -> dict[str, str]:
    """The card's sections for a model trained with `lstm-serve train --text`: the files, the split, the
    vocabulary, the command that reproduces it, and a sample prompt from the held-out text."""
    files = corpus.get("files", [])
    split = corpus.get("split", {})
    vocab = corpus.get("vocabulary", {})
    tc = train_meta.get("train_config", {})
    rows = "\n".join(
        f"| `{f['path']}` | {f['characters']:,} | {f['bytes']:,} | {'validation' if f['validation'] else 'training'} |"
        for f in files
    )
    val_files = split.get("validation_files") or []
    held = f"{split.get('method')} held out for validation"
    if val_files:
        held += f" ({', '.join(f'`{v}`' for v in val_files)})"
    chars = vocab.get("characters", "")
    shown = json.dumps(chars, ensure_ascii=False)
    data = f"""## Data
{corpus.get("name")}.

| file | characters | bytes | used for |
|---|---|---|---|
{rows}

Split: {held}; {split.get("train_characters", 0):,} characters for training, {split.get("validation_characters", 0):,}
for validation ({evaluation.characters:,} scored). Files are read as UTF-8 and joined with a newline.

Vocabulary: {vocab.get("size")} characters, built from the whole text (training and validation), in token-id order
(as JSON): `{shown}`.

"""
    text_args = " ".join(f["path"] for f in files)
    val_args = f" --val-files {' '.join(val_files)}" if split.get("method") == "files named by --val-files" else ""
    fraction = split.get("val_fraction")
    reproduce = (
        f"Reproduce: `lstm-serve train --text {text_args}{val_args} --val-fraction {fraction} "
        f"--steps {tc.get('steps')} --batch-size {tc.get('batch_size')} --seq-len {tc.get('seq_len')} "
        f"--lr {tc.get('lr')} --seed {tc.get('seed')} --hidden-size {cfg.hidden_size} --layers {cfg.num_layers} "
        f"--embed-size {cfg.embed_size}{' --peephole' if cfg.peephole else ''} "
        "--out CKPT` then `lstm-serve export --checkpoint CKPT --repository REPO --name NAME`.\n"
    )
    prompt = corpus.get("sample_prompt") or chars[:1]
    limitations = """## Limitations
- Character level and small: it learns spelling, layout and local patterns of its text, not meaning; long
  passages wander.
- Only the characters of its vocabulary can be fed; anything else is an error, never silently dropped.
- It knows only the text it was trained on; judge its output against that text's licence and purpose.
"""
    return {
        "subject": "the text files listed under Data (`lstm-serve train --text`)",
        "data": data,
        "reproduce": reproduce,
        "prompt": prompt,
        "limitations": limitations,
    }


def _retarget(text: str, own: dict[str, str]) -> str:
    """The plays' card with the sections that speak of the plays replaced by those of the user's text."""
    text = _replace_section(text, "## Data", own["data"])
    text = _replace_section(text, "## Limitations", own["limitations"])
    start = text.find("Reproduce: ")
    if start >= 0:
        end = text.find("\n\n", start)
        text = text[:start] + own["reproduce"] + text[end + 1 if end >= 0 else len(text) :]
    text = text.replace("on the held-out plays.", "on the held-out text.")
    text = text.replace("(ONNX Runtime, `lstm-serve evaluate`)", "(ONNX Runtime, measured at export)")
    return text.replace("## Sample (prompt `ROMEO:`", f"## Sample (prompt {json.dumps(own['prompt'])}")


def _replace_section(text: str, heading: str, body: str) -> str:
    start = text.find("\n" + heading)
    if start < 0:
        return text
    end = text.find("\n## ", start + 1)
    return text[: start + 1] + body + (text[end + 1 :] if end >= 0 else "")


PRECISION_BEGIN = "<!-- precision: written by `lstm-serve quantize --card` -->"
PRECISION_END = "<!-- /precision -->"


def precision_section(fp32: Path, int8: Path, speeds: dict[str, dict[int, float]], machine: str) -> str:
    """The card's fp32-against-int8 section: files, fingerprints, held-out losses and raw ONNX Runtime speeds."""
    from model.quantize import MAX_LOSS_INCREASE, read_props

    props = {"fp32": read_props(fp32), "int8": read_props(int8)}
    loss = {k: float(p["val_loss"]) if p.get("val_loss") else None for k, p in props.items()}
    size = {"fp32": fp32.stat().st_size / 1e6, "int8": int8.stat().st_size / 1e6}

    def shown(v: float | None) -> str:
        return "not measured" if v is None else f"{v:.4f}"

    delta = f" ({loss['int8'] - loss['fp32']:+.4f})" if loss["int8"] is not None and loss["fp32"] is not None else ""
    rows = [
        f"| file | `{fp32.name}` ({size['fp32']:.1f} MB) | `{int8.name}` ({size['int8']:.1f} MB) |",
        f"| fingerprint | `{props['fp32']['fingerprint']}` | `{props['int8']['fingerprint']}` |",
        f"| validation loss (nats/char) | {shown(loss['fp32'])} | {shown(loss['int8'])}{delta} |",
    ]
    for b in sorted(speeds.get("fp32", {})):
        f, q = speeds["fp32"][b], speeds["int8"][b]
        rows.append(f"| raw ONNX Runtime, batch {b} (tokens/s) | {f:,.0f} | {q:,.0f} ({q / f:.1f}x) |")
    body = "\n".join(rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return f"""{PRECISION_BEGIN}
## Precision: fp32 and int8
`{int8.name}` is `{fp32.name}` through ONNX Runtime's dynamic int8 quantization
(`lstm-serve quantize`, onnxruntime {ort.__version__}): each LSTM operator becomes `DynamicQuantizeLSTM`, its W and
R stored as int8 with one symmetric scale per tensor and its input and state quantized to uint8 at every call; the
embedding and the output layer stay float32. Its metadata records `quantization: int8`, the fp32 parent's
fingerprint and both losses; its own fingerprint keeps the states of the two apart.

| | fp32 (the reference) | int8 |
|---|---|---|
{body}

Losses: `lstm-serve evaluate --model <file>` on the held-out text. Speeds: one-token steps with the state
carried, CPU provider, one intra-op thread (the server's defaults), median step time, the two models measured in
turns ({machine}; load average {load:.1f} during the run). On the CPU provider the server serves int8 when its
loss is at most {MAX_LOSS_INCREASE} nats/char above fp32's; fp32 on CUDA, or with `LSTM_SERVE_PRECISION=fp32`.
The int8 activations are quantized over each call's whole tensors, so its outputs also move (by that rounding, not
more) with how a text is cut into calls and which other sessions share a batch; fp32's do not.
{PRECISION_END}
"""


def write_precision_section(card: Path, section: str) -> None:
    """Put `section` into the card: in place of an earlier one, else before the sample, else at the end."""
    text = card.read_text()
    start, end = text.find(PRECISION_BEGIN), text.find(PRECISION_END)
    if start >= 0 and end > start:
        text = text[:start] + section + text[end + len(PRECISION_END) + 1 :]
    elif (at := text.find("\n## Sample")) >= 0:
        text = text[: at + 1] + section + "\n" + text[at + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    card.write_text(text)
