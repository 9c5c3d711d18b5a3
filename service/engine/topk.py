"""Next-character distributions from logits: softmax in float64 (stable for peaked logits) and top-k."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.tokenizer import CharTokenizer


@dataclass(slots=True)
class TokenProb:
    """One of the most likely next tokens. Not frozen, though nothing changes one: a batch of 64 predicts makes
    320 of them on the engine thread, and a frozen dataclass's __init__ costs three times as much. The API writes
    them with orjson as they are (a dataclass is a JSON object of its fields, in this order)."""

    token: str
    id: int
    prob: float


def softmax(logits: np.ndarray) -> np.ndarray:
    """(V,) logits -> (V,) float64 probabilities; shifting by the max keeps exp from overflowing."""
    z = logits.astype(np.float64)
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    return p


def top_k(logits: np.ndarray, k: int, tokenizer: CharTokenizer) -> list[TokenProb]:
    """The k most likely next tokens of (V,) logits, most likely first; ties go to the lower id."""
    probs = softmax(logits)
    k = max(1, min(k, probs.shape[0]))
    # lexsort's last key is primary: probability descending, then id ascending for a deterministic order.
    order = np.lexsort((np.arange(probs.shape[0]), -probs))[:k]
    return [TokenProb(token=tokenizer.chars[i], id=int(i), prob=float(probs[i])) for i in order]


def top_k_rows(logits: np.ndarray, ks: list[int], tokenizer: CharTokenizer) -> list[list[TokenProb]]:
    """top_k for several rows at once: (n, V) logits, one k per row; one softmax and one sort for the batch."""
    z = logits.astype(np.float64)  # (n, V)
    z -= z.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    # A stable sort of -p keeps equal probabilities in id order: the same order as top_k's lexsort.
    order = np.argsort(-probs, axis=1, kind="stable")  # (n, V)
    chars, vocab = tokenizer.chars, probs.shape[1]
    widest = max(1, min(max(ks), vocab))
    top = order[:, :widest]  # (n, widest): one gather and one conversion for the batch, not one per row
    all_ids = top.tolist()
    all_p = np.take_along_axis(probs, top, axis=1).tolist()
    out = []
    for ids, p, k in zip(all_ids, all_p, ks, strict=True):
        n = max(1, min(k, vocab))
        out.append([TokenProb(chars[i], i, q) for i, q in zip(ids[:n], p[:n], strict=True)])
    return out
