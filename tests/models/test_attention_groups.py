"""Attention groups (Batch.packed(group_ratio, alone)): sequences of similar length share a tighter
padded grid for attention (or, alone=True, each its own); the scores must be those of one grid, for
every family and padding side."""

from __future__ import annotations

import random

import pytest
import torch
from llama_checkpoints import make_nvidia_reranker

from rankserve.engine.backends.torch_runner import TorchRunner
from rankserve.engine.tokenize import Encoded
from rankserve.models.batch import Batch
from rankserve.models.loader import load_model

LENGTHS = [61, 60, 58, 44, 43, 30, 29, 28, 9, 8, 3]  # longest first, as the engine cuts batches


def sequences(lengths, vocab: int = 90, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab) for _ in range(n)] for n in lengths]


@pytest.fixture(scope="module")
def llama_rr(tmp_path_factory):
    return make_nvidia_reranker(tmp_path_factory.mktemp("llama-rr-groups"))


def test_groups_are_contiguous_tight_and_cover_the_batch():
    packed = Batch.from_sequences(sequences(LENGTHS), pad_id=0).packed(0.9)
    assert len(packed.groups) >= 4
    assert packed.groups[0][0] == 0 and packed.groups[-1][1] == sum(LENGTHS)
    for (_, end, _), (start, _, _) in zip(packed.groups, packed.groups[1:]):
        assert end == start  # packed rows run on from group to group
    seen = []
    for start, end, g in packed.groups:
        lengths = g.lengths.tolist()
        assert end - start == sum(lengths) and g.seq_len == max(lengths)  # each grid is its own longest
        assert min(lengths) >= 0.9 * lengths[0]
        seen += lengths
    assert seen == LENGTHS
    assert Batch.from_sequences(sequences(LENGTHS), pad_id=0).packed().groups == ()  # off by default
    assert Batch.from_sequences(sequences([5, 5, 5]), pad_id=0).packed(0.9).groups == ()  # one group: none


@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_grouped_attention_gives_the_same_scores(family, left, bert_ce_dir, llama_rr):
    spec = load_model(bert_ce_dir if family == "bert" else llama_rr)
    ids = sequences(LENGTHS)
    types = [[0] * (n // 2) + [1] * (n - n // 2) for n in LENGTHS] if family == "bert" else None
    batch = Batch.from_sequences(ids, types, pad_id=spec.pad_id, left=left)
    grouped = batch.packed(0.9)
    assert len(grouped.groups) >= 4
    with torch.inference_mode():
        expected, got = spec.module(batch.packed()), spec.module(grouped)
    assert (got - expected).abs().max().item() <= 1e-5
    assert expected.std() > 1e-3  # the check can fail: scores differ between sequences


def test_cpu_runner_gives_each_sequence_its_own_attention(bert_ce_dir):
    """One group per sequence: a sequence's attention never depends on its batch neighbours."""
    spec = load_model(bert_ce_dir)
    seen = []
    spec.module.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    items = [Encoded(ids=ids, type_ids=[0] * len(ids)) for ids in sequences(LENGTHS)]
    TorchRunner(spec, torch.device("cpu"), threads=1, dtype="float32").forward(items)
    assert [(end - start, g.seq_len) for start, end, g in seen[0].groups] == [(n, n) for n in LENGTHS]
