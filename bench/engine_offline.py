"""Offline engine benchmark: rankserve vs sentence-transformers on the same model and pairs.

Cross-encoder (MiniLM-L6 size): rankserve Engine.rank (all queries submitted concurrently) vs
`CrossEncoder.predict(all_pairs)`; bi-encoder (the default all-MiniLM-L6-v2): Engine.embed vs
`SentenceTransformer.encode`. Rounds are interleaved; each figure is the best of its rounds.
Prints items/s (pairs or texts), ours/peer, max |delta| (logits, or vector components), and
real-token GFLOP/s as a fraction of the fp32 matmul peak measured in the same run.

    python bench/engine_offline.py [--rounds 3] [--queries 8] [--per-query 64] [--dtype float32]
        [--models cross-encoder,bi-encoder] [--infinity-python /tmp/infvenv/bin/python]  # Infinity: own venv
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, bert_flops, matmul_peak_gflops, minilm_cross_encoder, workload  # noqa: E402

from rankserve.config import load_config  # noqa: E402
from rankserve.engine.engine import Engine  # noqa: E402
from rankserve.metrics import Metrics  # noqa: E402
from rankserve.models.loader import default_model_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--per-query", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-batch-tokens", type=int, default=0, help="0 = the server default for the device")
    ap.add_argument("--workloads", default="uniform,mixed")
    ap.add_argument("--infinity-python", default=None, help="python of a venv with infinity-emb[torch]")
    ap.add_argument("--models", default="cross-encoder,bi-encoder")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    # The peak is re-measured every round and the best kept: one sample taken while the shared
    # machine is busy would understate it and overstate every %peak.
    peak = [matmul_peak_gflops()]
    rows = []
    if "cross-encoder" in args.models:
        rows += cross_encoder(args, peak)
    if "bi-encoder" in args.models:
        rows += bi_encoder(args, peak)
    print(f"fp32 matmul peak (best of the run): {peak[0]:.1f} GFLOP/s, torch threads {torch.get_num_threads()}, "
          f"dtype {args.dtype}")
    print(f"{'model':13} {'workload':9} {'items':>6} {'ours /s':>8} {'peer /s':>8} {'ours/peer':>9} {'max|d|':>9} "
          f"{'ours %peak':>10} {'peer %peak':>10}")
    for model, kind, n, t_ours, t_peer, delta, flops in rows:
        print(f"{model:13} {kind:9} {n:6d} {n / t_ours:8.1f} {n / t_peer:8.1f} {t_peer / t_ours:8.2f}x {delta:9.2e} "
              f"{flops / t_ours / 1e9 / peak[0]:10.0%} {flops / t_peer / 1e9 / peak[0]:10.0%}")


def interleaved(run_ours, run_peer, rounds: int, peak: list[float]):
    """Best seconds and last outputs of ours and the peer over interleaved rounds; updates the peak."""
    t_ours, t_peer = float("inf"), float("inf")
    for _ in range(rounds):
        peak[0] = max(peak[0], matmul_peak_gflops(1.0))
        t, ours = best_of(run_ours, 1)
        t_ours = min(t_ours, t)
        t, theirs = best_of(run_peer, 1)
        t_peer = min(t_peer, t)
    return t_ours, ours, t_peer, theirs


def start_engine(loop, model_dir: Path, args) -> Engine:
    config = load_config({"model": str(model_dir), "dtype": args.dtype, "warmup": True,
                          "max_batch_tokens": args.max_batch_tokens}, environ={})
    engine = Engine.load(config, Metrics())
    loop.run_until_complete(engine.start())
    return engine


def bi_encoder(args, peak: list[float]) -> list[tuple]:
    """all-MiniLM-L6-v2: Engine.embed (one call per query's passages, all concurrent) vs
    SentenceTransformer.encode(all texts, normalized)."""
    from sentence_transformers import SentenceTransformer

    loop = asyncio.new_event_loop()
    engine = start_engine(loop, default_model_dir(), args)
    peer = SentenceTransformer(str(default_model_dir()), device="cpu")
    c = engine.spec.module.model.config
    rows = []
    for kind in args.workloads.split(","):
        work = workload(kind, args.queries, args.per_query)
        texts = [p for _, ps in work for p in ps]

        async def ours_all():
            return await asyncio.gather(*(engine.embed(ps, None, "END") for _, ps in work))

        def run_ours():
            return torch.cat([r.vectors for r in loop.run_until_complete(ours_all())])

        def run_peer():
            return peer.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_tensor=True,
                               show_progress_bar=False)

        t_ours, ours, t_peer, theirs = interleaved(run_ours, run_peer, args.rounds, peak)
        lengths = [len(e) for e in engine.policy.texts(texts, "END")]
        flops = bert_flops(lengths, c.hidden_size, c.intermediate_size, c.num_hidden_layers)
        rows.append(("bi-encoder", kind, len(texts), t_ours, t_peer, (ours - theirs.cpu()).abs().max().item(), flops))
    loop.run_until_complete(engine.stop())
    return rows


def cross_encoder(args, peak: list[float]) -> list[tuple]:
    """MiniLM-L6-size cross-encoder: Engine.rank (all queries concurrent) vs CrossEncoder.predict(all pairs),
    and Infinity when its venv is given."""

    from sentence_transformers import CrossEncoder

    model_dir = minilm_cross_encoder(Path(tempfile.gettempdir()) / "rankserve-bench-minilm-ce")
    loop = asyncio.new_event_loop()
    engine = start_engine(loop, model_dir, args)
    peer = CrossEncoder(str(model_dir), device="cpu", max_length=engine.spec.max_length)
    c = engine.spec.module.bert.config
    rows = []
    for kind in args.workloads.split(","):
        work = workload(kind, args.queries, args.per_query)
        pairs = [(q, p) for q, ps in work for p in ps]

        async def ours_all():
            return await asyncio.gather(*(engine.rank(q, ps, "END") for q, ps in work))

        def run_ours():
            return [s for r in loop.run_until_complete(ours_all()) for s in r.scores]

        def run_st():
            return peer.predict(pairs, batch_size=32, activation_fn=torch.nn.Identity(), show_progress_bar=False)

        t_ours, ours, t_st, st = interleaved(run_ours, run_st, args.rounds, peak)
        delta = (torch.tensor(ours) - torch.tensor(st, dtype=torch.float32)).abs().max().item()
        lengths = [len(e) for q, ps in work for e in engine.policy.pairs(q, ps, "END")]
        flops = bert_flops(lengths, c.hidden_size, c.intermediate_size, c.num_hidden_layers)
        n = len(pairs)
        if args.infinity_python:
            t_inf, d_inf = infinity(args.infinity_python, model_dir, work, args.rounds, ours)
            print(f"{kind:9} Infinity: {n / t_inf:.1f} pairs/s, ours/Infinity {t_inf / t_ours:.2f}x, "
                  f"max|dlogit| vs ours {d_inf:.2e}")
        rows.append(("cross-encoder", kind, n, t_ours, t_st, delta, flops))
    print(f"batch budget {engine.batcher.max_batch_tokens} tokens")
    loop.run_until_complete(engine.stop())
    return rows


def infinity(python: str, model_dir: Path, work, rounds: int, ours: list[float]) -> tuple[float, float]:
    """Run bench/infinity_peer.py in Infinity's own venv on the same workload: (best seconds, max |d|)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(work, f)
    out = subprocess.run([python, str(Path(__file__).parent / "infinity_peer.py"), str(model_dir), f.name, str(rounds)],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    delta = (torch.tensor(result["scores"]) - torch.tensor(ours)).abs().max().item()
    return result["seconds"], delta


if __name__ == "__main__":
    main()
