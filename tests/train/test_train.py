"""``rankserve train`` on a tiny random BERT and a synthetic BEIR set: the loss falls, the folder
serves the trained logits, training resumes, and mined negatives are never relevant."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
import torch
from checkpoints import WORDS
from conftest import app_client, require, wait_ready

from rankserve.cli import main
from rankserve.eval import beir
from rankserve.models.loader import load_model

TOPICS = [
    "files directory list",
    "network socket connect",
    "disk space usage",
    "process memory kill",
    "password user group",
    "archive compress extract",
    "date time print",
    "text pattern search",
    "sort unique lines",
    "kernel module load",
    "copy move remove",
    "count words lines",
]


def synthetic_beir(path, passages_per_page: int = 2, seed: int = 0):
    """A query per topic; its page's passages repeat the topic's words among filler, other pages
    share some filler words (so BM25 retrieves them as negatives)."""
    rng = random.Random(seed)
    corpus, queries, qrels = [], [], {}
    for t, topic in enumerate(TOPICS):
        page = f"page{t}.1"
        for n in range(passages_per_page):
            filler = " ".join(rng.choice(WORDS) for _ in range(12))
            text = f"{topic} {filler}" if n == 0 else f"{filler} {topic.split()[0]}"
            corpus.append({"_id": f"{page}#{n}", "title": "", "text": text, "metadata": {"page": page}})
        queries.append({"_id": f"q{t}", "text": f"how do i {topic}"})
        qrels[f"q{t}"] = {page: 1}
    beir.write(path, corpus, queries, qrels)
    return path


def test_mined_negatives_never_include_a_relevant_page(tmp_path):
    require(__import__("importlib").util.find_spec("bm25s") is not None, "no bm25s", "pip install 'rankserve[eval]'")
    from rankserve.train.mining import examples, mine, positives

    ds = beir.load(synthetic_beir(tmp_path / "d", passages_per_page=3))
    negatives = asyncio.run(mine(ds, "bm25", 5, None, tmp_path / "cache", progress=False))
    assert set(negatives) == set(ds.query_ids) and all(negatives.values())
    for q, docs in negatives.items():
        relevant = set(ds.qrels[q])
        assert all(ds.doc_page[d] not in relevant for d in docs) and len(docs) == len(set(docs)) <= 5
    assert positives(ds)["q0"] == "page0.1#0"  # the first passage of the relevant page
    cached = asyncio.run(mine(ds, "bm25", 5, None, tmp_path / "cache", progress=False))
    assert cached == negatives and list((tmp_path / "cache").glob("negatives-*.json"))
    ex = examples(ds, negatives)
    assert len(ex) == len(TOPICS) and ex[0].query == "how do i files directory list"
    # by default negatives are passages as retrieved (some not first); "first" takes each retrieved
    # page's first passage, the positive's position, still never from a relevant page
    assert any(not d.endswith("#0") for docs in negatives.values() for d in docs)
    firsts = asyncio.run(mine(ds, "bm25", 5, None, tmp_path / "cache", progress=False, position="first"))
    assert all(d.endswith("#0") for docs in firsts.values() for d in docs) and all(firsts.values())
    assert all(ds.doc_page[d] not in set(ds.qrels[q]) for q, docs in firsts.items() for d in docs)


class WordEmbedder:
    """A deterministic bag-of-topic-words embedder: one axis per topic word, so cosines are known."""

    identity = "fake-words:1"
    axes = sorted({w for t in TOPICS for w in t.split()})

    async def embed(self, texts, input_type):
        import numpy as np

        return np.array([[t.split().count(w) + 0.01 for w in self.axes] for t in texts], dtype=np.float32)


def test_teacher_scores_are_the_embedders_cosines_with_the_positive_then_each_negative(tmp_path):
    require(__import__("importlib").util.find_spec("bm25s") is not None, "no bm25s", "pip install 'rankserve[eval]'")
    import numpy as np

    from rankserve.train.mining import examples, mine, positives, teacher_scores

    ds = beir.load(synthetic_beir(tmp_path / "d", passages_per_page=3))
    negatives = asyncio.run(mine(ds, "bm25", 4, None, tmp_path / "cache", progress=False))
    emb = WordEmbedder()
    teacher = asyncio.run(teacher_scores(ds, negatives, emb, tmp_path / "cache", progress=False))
    text = dict(zip(ds.doc_ids, ds.doc_texts))
    qtext = dict(zip(ds.query_ids, ds.query_texts))
    for q, pos in positives(ds).items():
        ids = [pos, *negatives[q]]
        vecs = asyncio.run(emb.embed([qtext[q], *(text[d] for d in ids)], "passage"))
        cos = vecs[1:] @ vecs[0] / (np.linalg.norm(vecs[1:], axis=1) * np.linalg.norm(vecs[0]))
        assert teacher[q] == pytest.approx(cos.tolist(), abs=1e-5)
        assert teacher[q][0] == max(teacher[q])  # the positive repeats the query's topic words
    ex = examples(ds, negatives, teacher)
    assert all(len(e.teacher) == 1 + len(e.negatives) for e in ex)
    assert examples(ds, negatives)[0].teacher == ()  # no teacher unless asked


def test_both_stages_teacher_is_the_mean_of_the_embedders_and_bm25s_distributions(tmp_path):
    """``stages="both"``: softmax(scale x score) gives back 0.5 softmax(scale x cosine) + 0.5
    softmax(BM25), BM25 taken from the eval's own top-k search (a different bm25s call)."""
    require(__import__("importlib").util.find_spec("bm25s") is not None, "no bm25s", "pip install 'rankserve[eval]'")
    import numpy as np

    from rankserve.eval.retrieval import bm25_search, tokenize
    from rankserve.train.mining import mine, positives, teacher_scores

    ds = beir.load(synthetic_beir(tmp_path / "d", passages_per_page=3))
    negatives = asyncio.run(mine(ds, "bm25", 4, None, tmp_path / "cache", progress=False))
    emb = WordEmbedder()
    dense = asyncio.run(teacher_scores(ds, negatives, emb, tmp_path / "cache", progress=False))
    both = asyncio.run(teacher_scores(ds, negatives, emb, tmp_path / "cache", progress=False, stages="both", scale=7.0))
    run = bm25_search(
        ds.doc_ids,
        [tokenize(t) for t in ds.doc_texts],
        ds.query_ids,
        [tokenize(t) for t in ds.query_texts],
        len(ds.doc_ids),
        progress=False,
    )

    def softmax(x):
        e = np.exp(np.asarray(x, dtype=np.float64) - max(x))
        return e / e.sum()

    moved = 0
    for q, pos in positives(ds).items():
        ids = [pos, *negatives[q]]
        lexical = [run[q].get(d, 0.0) for d in ids]
        expected = 0.5 * softmax([7.0 * c for c in dense[q]]) + 0.5 * softmax(lexical)
        assert softmax([7.0 * t for t in both[q]]) == pytest.approx(expected.tolist(), abs=1e-5)
        moved += not np.allclose(expected, softmax([7.0 * c for c in dense[q]]), atol=1e-3)
    assert moved > 0  # BM25 changes the target: the check can fail
    with pytest.raises(ValueError, match="teacher"):
        asyncio.run(teacher_scores(ds, negatives, emb, None, progress=False, stages="colbert"))


def test_distill_target_mixes_the_label_with_the_teachers_softmax():
    import math

    from rankserve.train.fit import FitOptions, distill_target

    teacher = (0.5, 0.7, 0.1)  # the teacher prefers the first negative to the positive
    opts = FitOptions(output=None, base=None, teacher_weight=0.4, teacher_scale=10.0)  # type: ignore[arg-type]
    p = distill_target(teacher, opts)
    soft = [math.exp(10 * t) for t in teacher]
    expected = [0.4 * s / sum(soft) for s in soft]
    expected[0] += 0.6
    assert p == pytest.approx(expected, rel=1e-9) and sum(p) == pytest.approx(1.0)
    assert p[0] > p[1] > p[2]  # the label keeps the positive first; the teacher orders the rest
    label_only = distill_target(teacher, FitOptions(None, None, teacher_weight=0.0))  # type: ignore[arg-type]
    assert label_only == pytest.approx([1.0, 0.0, 0.0], abs=1e-12)
    with pytest.raises(ValueError, match="teacher"):
        distill_target((), opts)


def test_distill_loss_is_the_listwise_loss_when_the_target_is_the_label(bert_bi_dir):
    """With all mass on the positive the distilled loss is sentence-transformers' own
    MultipleNegativesRankingLoss on the same batch (same in-batch negatives: same seed); with the
    teacher's share it differs, and its gradient reaches the model."""
    require(
        __import__("importlib").util.find_spec("sentence_transformers") is not None,
        "training needs the [train] extra",
        "pip install 'rankserve[train]'",
    )
    from sentence_transformers.cross_encoder import CrossEncoder, losses

    from rankserve.train.fit import distill_loss

    model = CrossEncoder(str(bert_bi_dir), num_labels=1, max_length=32, device="cpu")
    topics = TOPICS[:4]
    inputs = [[f"how do i {t}" for t in topics], [f"{t} here" for t in topics]]
    inputs += [[f"{topics[(i + k) % 4]} there" for i in range(4)] for k in (1, 2)]  # two hard negatives
    label = torch.tensor([[1.0, 0.0, 0.0]] * 4)
    torch.manual_seed(3)
    expected = losses.MultipleNegativesRankingLoss(model, num_negatives=2)(inputs, None)
    torch.manual_seed(3)
    ours = distill_loss(model, 2)(inputs, label)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.manual_seed(3)
    soft = distill_loss(model, 2)(inputs, torch.tensor([[0.6, 0.3, 0.1]] * 4))
    assert abs(soft.item() - expected.item()) > 1e-4
    soft.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("loss", ["bce", "listwise", "distill"])
def test_train_loss_falls_and_the_folder_serves_the_trained_logits(tmp_path, bert_bi_dir, loss):
    require(
        all(__import__("importlib").util.find_spec(m) for m in ("bm25s", "datasets", "sentence_transformers")),
        "training needs the [train] extra",
        "pip install 'rankserve[train]'",
    )
    data = synthetic_beir(tmp_path / "train")
    out = tmp_path / "model"
    common = [
        "train",
        "--dataset",
        str(data),
        "--output",
        str(out),
        "--base",
        str(bert_bi_dir),
        "--mine",
        "bm25",
        "--negatives",
        "3",
        "--batch-size",
        "8",
        "--learning-rate",
        "2e-3",
        "--max-length",
        "48",
        "--save-steps",
        "5",
        "--loss",
        loss,
        "--no-progress",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    heldout = synthetic_beir(tmp_path / "test", seed=1)
    assert main(common + ["--max-steps", "30", "--eval-dataset", str(heldout), "--eval-top-k", "5"]) == 0
    record = json.loads((out / "training.json").read_text())
    # without validation pages no fusion weight is chosen, least of all on the held-out data
    assert "validation" not in record and record["heldout"]["dataset"] == str(heldout)
    assert not {"rerank_weight", "nDCG@10_by_weight", "fused_metrics"} & set(record["heldout"])
    assert set(record["heldout"]["lift"]) == {"Dense+Rerank vs Dense", "Dense+Sparse+Rerank vs Dense+Sparse"}
    losses = record["training"]["loss_history"]
    assert len(losses) >= 4 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    assert record["training"]["steps"] == 30 and record["mining"]["method"] == "bm25"

    spec = load_model(out)  # a rankserve cross-encoder as saved
    assert spec.kind == "cross-encoder" and spec.family == "bert"
    from sentence_transformers.cross_encoder import CrossEncoder

    pairs = [
        ("how do i disk space usage", "disk space usage shown per folder"),
        ("how do i disk space usage", "sort lines"),
    ]
    trained = CrossEncoder(str(out), device="cpu").predict(pairs, activation_fn=torch.nn.Identity())
    with app_client(model=str(out)) as client:
        wait_ready(client)
        body = client.post(
            "/v1/ranking", json={"query": {"text": pairs[0][0]}, "passages": [{"text": p} for _, p in pairs]}
        ).json()
    served = {r["index"]: r["logit"] for r in body["rankings"]}
    assert [served[0], served[1]] == pytest.approx([float(x) for x in trained], abs=1e-5)

    # resumable: a second run continues from the last checkpoint to 40 steps
    assert main(common + ["--max-steps", "40", "--resume"]) == 0
    again = json.loads((out / "training.json").read_text())["training"]
    assert again["resumed"] and again["steps"] == 40


def test_validation_pages_choose_the_fusion_weight_that_eval_applies(tmp_path, bert_bi_dir):
    """--validation-fraction: validation pages are left out of training, the rerank weight chosen on
    them is recorded, and `rankserve eval --rerank-weight trained` reproduces the fused held-out table."""
    require(
        all(__import__("importlib").util.find_spec(m) for m in ("bm25s", "datasets", "sentence_transformers")),
        "training needs the [train] extra",
        "pip install 'rankserve[train]'",
    )
    data = synthetic_beir(tmp_path / "train")
    heldout = synthetic_beir(tmp_path / "test", seed=1)
    out = tmp_path / "model"
    assert (
        main(
            [
                "train",
                "--dataset",
                str(data),
                "--output",
                str(out),
                "--base",
                str(bert_bi_dir),
                "--mine",
                "bm25",
                "--negatives",
                "2",
                "--batch-size",
                "8",
                "--max-length",
                "48",
                "--max-steps",
                "4",
                "--validation-fraction",
                "0.4",
                "--eval-dataset",
                str(heldout),
                "--eval-top-k",
                "5",
                "--no-progress",
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    record = json.loads((out / "training.json").read_text())
    rest, validation, dropped = beir.load(data).split_pages(0.4, "validation:0")
    assert dropped == 0 and 0 < len(validation.query_ids) < len(TOPICS)
    assert record["queries"] == len(rest.query_ids) == len(TOPICS) - len(validation.query_ids)
    val = record["validation"]
    assert val["queries"] == len(validation.query_ids)
    grid = {float(w): v for w, v in val["nDCG@10_by_weight"].items()}
    assert len(grid) == 11 and val["rerank_weight"] in grid
    assert grid[val["rerank_weight"]] == max(grid.values())
    fused = record["heldout"]["fused_metrics"]
    assert record["heldout"]["rerank_weight"] == val["rerank_weight"]

    results = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--dataset",
                str(heldout),
                "--output",
                str(results),
                "--reranker",
                str(out),
                "--rerank-weight",
                "trained",
                "--top-k",
                "5",
                "--no-progress",
                "--no-cache",
            ]
        )
        == 0
    )
    table = json.loads((results / "results.json").read_text())
    for pipeline in ("Dense+Rerank", "Dense+Sparse+Rerank", "Dense+Sparse"):
        assert table[pipeline] == pytest.approx(fused[pipeline], abs=1e-6)
    # a folder without a chosen weight, or a weight outside [0, 1], is a one-line usage error
    assert (
        main(
            [
                "eval",
                "--dataset",
                str(heldout),
                "--output",
                str(results),
                "--reranker",
                str(bert_bi_dir),
                "--rerank-weight",
                "trained",
                "--no-progress",
            ]
        )
        == 2
    )
    assert (
        main(["eval", "--dataset", str(heldout), "--output", str(results), "--rerank-weight", "1.5", "--no-progress"])
        == 2
    )


def test_several_training_sets_are_mixed_and_the_weight_is_chosen_on_another_corpus(tmp_path, bert_bi_dir, capsys):
    """Two --dataset sets are mined one by one and trained on together; --validation-dataset (a set
    not trained on) chooses the fusion weight; every --eval-dataset gets its own table."""
    require(
        all(__import__("importlib").util.find_spec(m) for m in ("bm25s", "datasets", "sentence_transformers")),
        "training needs the [train] extra",
        "pip install 'rankserve[train]'",
    )
    first, second = synthetic_beir(tmp_path / "a"), synthetic_beir(tmp_path / "b", passages_per_page=3, seed=2)
    validation, test = synthetic_beir(tmp_path / "val", seed=3), synthetic_beir(tmp_path / "test", seed=1)
    out = tmp_path / "model"
    common = ["train", "--dataset", str(first), str(second), "--output", str(out), "--base", str(bert_bi_dir)]
    common += ["--mine", "bm25", "--negatives", "2", "--batch-size", "8", "--max-length", "48", "--max-steps", "4"]
    common += ["--no-progress", "--cache-dir", str(tmp_path / "cache")]
    # splitting "the" training set is ambiguous with two of them: refused before any work
    assert main(common + ["--validation-fraction", "0.3"]) == 2
    assert "--validation-dataset" in capsys.readouterr().err and not out.exists()
    # nor is a weight chosen on a set it trains on
    assert main(common + ["--validation-dataset", str(first)]) == 2
    assert "also a training set" in capsys.readouterr().err and not out.exists()
    args = common + ["--max-queries", "10", "--validation-dataset", str(validation), "--validation-queries", "8"]
    assert main(args + ["--eval-dataset", str(test), str(validation), "--eval-top-k", "5"]) == 0
    record = json.loads((out / "training.json").read_text())
    assert record["queries_per_dataset"] == {str(first): 10, str(second): 10} and record["queries"] == 20
    assert record["training"]["rows"] == 20  # both sets' examples in one training table
    assert record["validation"]["dataset"] == str(validation) and record["validation"]["queries"] == 8
    weight = record["validation"]["rerank_weight"]
    assert record["heldout"]["dataset"] == str(test) and record["heldout_2"]["dataset"] == str(validation)
    assert record["heldout"]["rerank_weight"] == record["heldout_2"]["rerank_weight"] == weight
    assert record["heldout"]["queries"] == record["heldout_2"]["queries"] == len(TOPICS)
