"""Offline engine benchmark: rankserve vs sentence-transformers on the same model and pairs.

Cross-encoder (MiniLM-L6 size): rankserve Engine.rank (all queries submitted concurrently) vs
`CrossEncoder.predict(all_pairs)`; bi-encoder (the default all-MiniLM-L6-v2): Engine.embed vs
`SentenceTransformer.encode`; decoder reranker (Qwen3-Reranker-0.6B's shape, random weights, the
`qwen3-reranker` recipe): Engine.rank vs transformers `Qwen3ForCausalLM` run as the model card
shows (left-padded batches of the formatted prompts, last-position logits, z[yes] - z[no]). Rounds are interleaved; each figure is the best of its rounds.
Prints items/s (pairs or texts), ours/peer, max |delta| (logits, or vector components), and
real-token GFLOP/s as a fraction of the fp32 matmul peak measured in the same run.

    python bench/engine_offline.py [--rounds 3] [--queries 8] [--per-query 64] [--dtype float32] [--backend torch]
        [--models cross-encoder,bi-encoder] [--infinity-python /tmp/infvenv/bin/python]  # Infinity: own venv
    python bench/engine_offline.py --models decoder-reranker --queries 2 --per-query 8 --rounds 2 --workloads mixed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import bert_flops, best_of, matmul_peak_gflops, minilm_cross_encoder, workload  # noqa: E402

from rankserve.config import load_config  # noqa: E402
from rankserve.engine.engine import Engine  # noqa: E402
from rankserve.metrics import Metrics  # noqa: E402
from rankserve.models.model_dir import default_model_dir, read_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--per-query", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--backend", default="torch", help="ours: torch | onnxruntime | openvino")
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
    if "decoder-reranker" in args.models:
        rows += decoder_reranker(args, peak)
    print(
        f"fp32 matmul peak (best of the run): {peak[0]:.1f} GFLOP/s, torch threads {torch.get_num_threads()}, "
        f"ours: backend {args.backend}, dtype {args.dtype}"
    )
    print(
        f"{'model':16} {'workload':9} {'items':>6} {'ours /s':>8} {'peer /s':>8} {'ours/peer':>9} {'max|d|':>9} "
        f"{'ours %peak':>10} {'peer %peak':>10}"
    )
    for model, kind, n, t_ours, t_peer, delta, flops in rows:
        print(
            f"{model:16} {kind:9} {n:6d} {n / t_ours:8.1f} {n / t_peer:8.1f} {t_peer / t_ours:8.2f}x {delta:9.2e} "
            f"{flops / t_ours / 1e9 / peak[0]:10.0%} {flops / t_peer / 1e9 / peak[0]:10.0%}"
        )


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


def model_config(model_dir: Path) -> SimpleNamespace:
    """The model's config.json (layer sizes for the FLOP count; an ONNX backend's engine has no module)."""
    return SimpleNamespace(**read_json(model_dir / "config.json"))


def start_engine(loop, model_dir: Path, args) -> Engine:
    config = load_config(
        {
            "model": str(model_dir),
            "dtype": args.dtype,
            "backend": args.backend,
            "warmup": True,
            "max_batch_tokens": args.max_batch_tokens,
        },
        environ={},
    )
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
    c = model_config(default_model_dir())
    rows = []
    for kind in args.workloads.split(","):
        work = workload(kind, args.queries, args.per_query)
        texts = [p for _, ps in work for p in ps]

        async def ours_all():
            return await asyncio.gather(*(engine.embed(ps, None, "END") for _, ps in work))

        def run_ours():
            return torch.from_numpy(np.concatenate([r.vectors for r in loop.run_until_complete(ours_all())]))

        def run_peer():
            return peer.encode(
                texts, batch_size=32, normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False
            )

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
    c = model_config(model_dir)
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
            print(
                f"{kind:9} Infinity: {n / t_inf:.1f} pairs/s, ours/Infinity {t_inf / t_ours:.2f}x, "
                f"max|dlogit| vs ours {d_inf:.2e}"
            )
        rows.append(("cross-encoder", kind, n, t_ours, t_st, delta, flops))
    print(f"batch budget {engine.batcher.max_batch_tokens} tokens")
    loop.run_until_complete(engine.stop())
    return rows


QWEN3_0_6B = dict(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
    tie_word_embeddings=True,
    max_position_embeddings=40960,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
)


def decoder_reranker(args, peak: list[float]) -> list[tuple]:
    """Qwen3-Reranker-0.6B-shaped (random weights, a small BPE tokenizer with its chat tokens):
    Engine.rank with the qwen3-reranker recipe vs transformers as the model card runs it."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from decoder_checkpoints import decoder_tokenizer
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from rankserve.models.recipes import RECIPES

    model_dir = Path(tempfile.gettempdir()) / "rankserve-bench-qwen3-reranker-0.6b"
    if not (model_dir / "model.safetensors").exists():
        model_dir.mkdir(parents=True, exist_ok=True)
        decoder_tokenizer(model_dir, model_max_length=8192)
        torch.manual_seed(0)
        Qwen3ForCausalLM(Qwen3Config(**QWEN3_0_6B, pad_token_id=0)).eval().save_pretrained(model_dir)
    loop = asyncio.new_event_loop()
    engine = start_engine(loop, model_dir, args)
    assert engine.spec.extra["recipe"] == "qwen3-reranker"
    peer = Qwen3ForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = engine.policy.tokenizer
    yes, no = (tokenizer.encode(w, add_special_tokens=False).ids[0] for w in ("yes", "no"))
    template = RECIPES["qwen3-reranker"].template(None, None)
    rows = []
    for kind in args.workloads.split(","):
        work = workload(kind, args.queries, args.per_query)
        prompts = [tokenizer.encode(template.format(query=q, passage=p)).ids for q, ps in work for p in ps]

        async def ours_all():
            return await asyncio.gather(*(engine.rank(q, ps, "END") for q, ps in work))

        def run_ours():
            return [s for r in loop.run_until_complete(ours_all()) for s in r.scores]

        def run_peer(batch_size: int = 8):  # the model card: left padding, one forward per batch
            scores = []
            with torch.inference_mode():
                for start in range(0, len(prompts), batch_size):
                    part = prompts[start : start + batch_size]
                    width = max(map(len, part))
                    ids = torch.tensor([[0] * (width - len(x)) + x for x in part])
                    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in part])
                    logits = peer(input_ids=ids, attention_mask=mask).logits[:, -1, :]
                    scores += (logits[:, yes] - logits[:, no]).tolist()
            return scores

        t_ours, ours, t_peer, theirs = interleaved(run_ours, run_peer, args.rounds, peak)
        delta = (torch.tensor(ours) - torch.tensor(theirs)).abs().max().item()
        c = QWEN3_0_6B
        per_token = (
            2
            * c["num_hidden_layers"]
            * (
                c["hidden_size"] * c["head_dim"] * (2 * c["num_attention_heads"] + 2 * c["num_key_value_heads"])
                + 3 * c["hidden_size"] * c["intermediate_size"]
            )
        )
        flops = float(
            sum(
                per_token * len(x)
                + 4 * c["num_hidden_layers"] * len(x) ** 2 * c["num_attention_heads"] * c["head_dim"] // 2
                for x in prompts
            )
        )  # causal: half the attention products
        rows.append(("decoder-reranker", kind, len(prompts), t_ours, t_peer, delta, flops))
    loop.run_until_complete(engine.stop())
    return rows


def infinity(python: str, model_dir: Path, work, rounds: int, ours: list[float]) -> tuple[float, float]:
    """Run bench/infinity_peer.py in Infinity's own venv on the same workload: (best seconds, max |d|)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(work, f)
    out = subprocess.run(
        [python, str(Path(__file__).parent / "infinity_peer.py"), str(model_dir), f.name, str(rounds)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    delta = (torch.tensor(result["scores"]) - torch.tensor(ours)).abs().max().item()
    return result["seconds"], delta


if __name__ == "__main__":
    main()
