"""Inputs shared by the ONNX-export backends' tests (onnxruntime, openvino): mixed-length texts, a
query, the tokenizer call each model kind uses, Kendall tau for "ranks alike" checks, and the
served-embeddings comparison against torch fp32."""

from __future__ import annotations

import random

import numpy as np
from conftest import app_client, wait_ready

from rankserve.engine.engine import tokenizer_policy

WORDS = (
    "the a of to in is for list file files directory command print show copy move remove create "
    "process memory network socket time user system kernel disk search text pattern line sort "
    "compress archive paris france capital city river banana fruit potassium small animal"
).split()
QUERY = "how do i list the files in a directory"


def passages(n: int, seed: int = 0) -> list[str]:
    """Mixed lengths (2..60 words) so every batch is padded."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.choice([2, 5, 9, 20, 40, 60]))) for _ in range(n)]


def encode(spec, texts):
    """(QUERY, text) pairs for a cross-encoder, the texts alone for an embedder, tokenized as the engine does."""
    policy = tokenizer_policy(spec)
    return policy.pairs(QUERY, texts, "END") if spec.kind == "cross-encoder" else policy.texts(texts, "END")


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    n = len(a)
    return float((da * db).sum() / (n * (n - 1)))


def served_embeddings_vs_torch(model_dir, texts: list[str], **backend) -> tuple[np.ndarray, np.ndarray]:
    """POST /v1/embeddings to an app on torch fp32 and to one with ``backend`` overrides -> both [n, d]."""
    out = []
    for overrides in ({"threads": 1}, backend):
        with app_client(model=str(model_dir), **overrides) as client:
            wait_ready(client)
            r = client.post("/v1/embeddings", json={"input": texts})
        assert r.status_code == 200, r.text
        out.append(np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32))
    return out[0], out[1]


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest cosine between matching rows of a and b."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def assert_ranks_alike(kind: str, fp32: np.ndarray, lossy: np.ndarray, rel: float, tau: float) -> None:
    """A lossy mode's scores stay within ``rel`` x the fp32 score range and rank with Kendall tau >= ``tau``.
    Embedders rank the other texts by cosine to the first, as bi-encoder ranking does."""
    assert lossy.shape == fp32.shape
    if kind == "embedder":
        fp32, lossy = fp32[1:] @ fp32[0], lossy[1:] @ lossy[0]
    spread = float(fp32.max() - fp32.min())
    assert spread > 0
    assert np.abs(lossy - fp32).max() <= rel * spread
    assert kendall_tau(fp32, lossy) >= tau
