"""Batch invariance: a sequence's score is the same bits whatever else shares its batch.

The default CPU path (``--dtype auto`` = float32, torch backend) must give a pair the same logit
alone, inside batches of every shape and order, among batch-mates of other lengths, in batches large
enough to be cut into MLP row slices, for every architecture family. Equality is exact
(``np.array_equal``), not a tolerance. The thread count is configuration, not load: with one GEMM
library, a trained-size model (head size 32) gives the same bits at 1 and 2 threads, but the tiny
checkpoints' head size 8 does not (torch's CPU flash-attention kernel), so that check runs on the
real MiniLM only.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from checkpoints import make_bert_bi_encoder, make_deberta, make_modernbert
from decoder_checkpoints import make_decoder
from llama_checkpoints import make_nvidia_embedder, make_nvidia_reranker

from rankserve.engine.backends.cpu_gemm import onednn_available
from rankserve.engine.backends.torch_runner import TorchRunner
from rankserve.engine.tokenize import Encoded
from rankserve.models.loader import load_model
from rankserve.models.model_dir import default_model_dir
from rankserve.models.recipes import RecipeChoice

CPU = torch.device("cpu")
PROBE_LENGTHS = [3, 9, 17, 40, 41, 64, 120]  # short (a few GEMM rows) to several attention blocks


FAMILIES = [
    "bert-ce",
    "xlmr-ce",
    "bert-embedder",
    "minilm-real",
    "llama-rr",
    "llama-embedder",
    "qwen3-rr",
    "modernbert-ce",
    "deberta-ce",
]


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory, bert_ce_dir, xlmr_ce_dir):
    name = request.param
    root = tmp_path_factory.mktemp(name)
    if name == "bert-ce":
        return name, bert_ce_dir
    if name == "xlmr-ce":
        return name, xlmr_ce_dir
    if name == "bert-embedder":
        return name, make_bert_bi_encoder(root / "m")
    if name == "minilm-real":
        return name, default_model_dir()
    if name == "llama-rr":
        return name, make_nvidia_reranker(root / "m")
    if name == "llama-embedder":
        return name, make_nvidia_embedder(root / "m")
    if name == "qwen3-rr":
        return name, make_decoder(root / "m", "qwen3")
    if name == "modernbert-ce":
        return name, make_modernbert(root / "m", "ce")[0]
    return name, make_deberta(root / "m", "ce", "v3")[0]


def sequences(lengths, vocab: int, with_types: bool, seed: int, limit: int) -> list[Encoded]:
    rng = random.Random(seed)
    out = []
    for n in (min(n, limit) for n in lengths):
        ids = [rng.randrange(5, vocab) for _ in range(n)]
        out.append(Encoded(ids=ids, type_ids=[0] * (n // 2) + [1] * (n - n // 2) if with_types else None))
    return out


def longest_first(items: list[Encoded]) -> list[Encoded]:
    return sorted(items, key=lambda it: -len(it.ids))


def test_scores_do_not_depend_on_the_batch(family_dir):
    name, directory = family_dir
    spec = load_model(directory, choice=RecipeChoice(name="qwen3-reranker") if name == "qwen3-rr" else RecipeChoice())
    runner = TorchRunner(spec, CPU, threads=2)  # the defaults: --dtype auto, --cpu-gemm auto
    assert runner.precision == "float32"
    vocab = 90  # every tiny tokenizer here has more ids than this
    with_types = name in ("bert-ce", "bert-embedder", "minilm-real", "deberta-ce")
    probes = sequences(PROBE_LENGTHS, vocab, with_types, seed=1, limit=spec.max_length - 1)
    alone = [runner.forward([p]) for p in probes]
    others = sequences(
        [5, 12, 17, 33, 40, 58, 90, 129, 131, 200] * 3, vocab, with_types, seed=2, limit=spec.max_length - 1
    )
    rng = random.Random(3)
    shapes = {
        "together": longest_first(probes),
        "shuffled": rng.sample(probes, len(probes)),
        "among others": longest_first(probes + others),
        "others shuffled in": rng.sample(probes + others, len(probes) + len(others)),
    }
    for label, batch in shapes.items():
        out = runner.forward(batch)
        for probe, expected in zip(probes, alone):
            got = out[next(i for i, it in enumerate(batch) if it is probe)]
            assert np.array_equal(got, expected[0]), (name, label, len(probe.ids), np.abs(got - expected[0]).max())
    for probe, expected in zip(probes, alone):  # each probe with a longer and a shorter batch-mate
        out = runner.forward(longest_first([probe, others[-1], others[0]]))
        got = out[[len(it.ids) for it in longest_first([probe, others[-1], others[0]])].index(len(probe.ids))]
        assert np.array_equal(got, expected[0]), (name, len(probe.ids))
    assert float(np.std(np.concatenate([a.reshape(-1) for a in alone]))) > 0  # the scores differ: the check can fail


@pytest.mark.parametrize(
    "gemm",
    ["torch", pytest.param("onednn", marks=pytest.mark.skipif(not onednn_available(), reason="no oneDNN linear"))],
)
def test_real_model_gives_the_same_bits_at_one_and_two_threads(gemm):
    """Each GEMM library, forced, gives the same bits at 1 and 2 threads. Forced, because
    ``--cpu-gemm auto`` times the libraries at the configured thread count and may keep a different
    one at 1 and at 2 threads (on CI's host it did: the two runs' bits differed)."""
    spec = load_model(default_model_dir())
    probes = sequences(PROBE_LENGTHS, 90, True, seed=1, limit=spec.max_length - 1)
    runner = TorchRunner(spec, CPU, threads=2, cpu_gemm=gemm)
    two = [runner.forward([p]) for p in probes]
    try:
        runner = TorchRunner(spec, CPU, threads=1, cpu_gemm=gemm)
        assert runner.gemm == gemm
        one = [runner.forward([p]) for p in probes]
    finally:
        torch.set_num_threads(2)
    assert all(np.array_equal(a, b) for a, b in zip(one, two)), [float(np.abs(a - b).max()) for a, b in zip(one, two)]
