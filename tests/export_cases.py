"""Inputs shared by the ONNX-export backends' tests (onnxruntime, openvino): mixed-length texts, a
query, the tokenizer call each model kind uses, and Kendall tau for "ranks alike" checks."""

from __future__ import annotations

import random

import torch

from rankserve.engine.tokenize import TokenizerPolicy

WORDS = ("the a of to in is for list file files directory command print show copy move remove create "
         "process memory network socket time user system kernel disk search text pattern line sort "
         "compress archive paris france capital city river banana fruit potassium small animal").split()
QUERY = "how do i list the files in a directory"


def passages(n: int, seed: int = 0) -> list[str]:
    """Mixed lengths (2..60 words) so every batch is padded."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.choice([2, 5, 9, 20, 40, 60]))) for _ in range(n)]


def encode(spec, texts):
    policy = TokenizerPolicy(str(spec.tokenizer_file), max_length=spec.max_length, rerank_template=None,
                             with_type_ids=True)
    return policy.pairs(QUERY, texts, "END") if spec.kind == "cross-encoder" else policy.texts(texts, "END")


def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> float:
    da = torch.sign(a[:, None] - a[None, :])
    db = torch.sign(b[:, None] - b[None, :])
    n = len(a)
    return float((da * db).sum() / (n * (n - 1)))
