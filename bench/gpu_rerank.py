"""The GPU target: 500 passages x ~512 tokens through a Llama-3.2-1B-shaped bidirectional reranker, bf16.

One "request" = 500 (query, passage) pairs of 512 tokens, cut into micro-batches by the engine's own
``cut_batches`` (token budget ``--max-batch-tokens``) and run through rankserve's Llama code
(``models/llama.py``: packed tokens, SDPA attention, mean pooling, score head) exactly as the
server's model thread does. Random weights (speed does not depend on their values); the full
128,256-token vocabulary. Prints the request latency (median of ``--rounds`` after a warm-up) and
the model FLOP utilisation against the GPU's dense bf16 peak (``--peak-tflops``; H100 SXM: 989).

    python bench/gpu_rerank.py                      # CUDA, the real shape
    python bench/gpu_rerank.py --device cpu --tiny  # a smoke run of the same code on CPU

Tokenization is not timed here (it runs on the CPU thread pool in the server, overlapped with the
GPU); the server benchmark covers the HTTP path.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from llama_long_context import build  # noqa: E402

from rankserve.engine.batcher import WorkItem, cut_batches  # noqa: E402
from rankserve.engine.outputs import finish  # noqa: E402
from rankserve.engine.tokenize import Encoded  # noqa: E402
from rankserve.models.batch import Batch  # noqa: E402


def model_flops(lengths: list[int], layers: int, hidden: int, kv_dim: int, inter: int) -> float:
    """Matmul FLOPs over real tokens: q/o (hidden^2), k/v (hidden x kv_dim), SwiGLU (3 x hidden x inter),
    attention scores and values (4 x T^2 x hidden per layer)."""
    per_token = 2 * (2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * inter)
    return float(sum(layers * (t * per_token + 4 * t * t * hidden) for t in lengths))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    ap.add_argument("--passages", type=int, default=500)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--max-batch-tokens", type=int, default=65536)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense peak of --dtype on the device")
    ap.add_argument("--tiny", action="store_true", help="2 layers, vocab 1000, 8 passages x 64 tokens")
    args = ap.parse_args()
    if args.tiny:
        args.layers, args.vocab, args.passages, args.tokens = 2, 1000, 8, 64
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    model = build(args.layers, args.vocab, dtype).to(device)
    c = model.model.config
    gen = torch.Generator().manual_seed(1)
    items = [
        Encoded([0] + torch.randint(1, args.vocab, (args.tokens - 1,), generator=gen).tolist(), None)
        for _ in range(args.passages)
    ]
    batches = [[w.encoded for w in b] for b in cut_batches([WorkItem(e, None) for e in items], args.max_batch_tokens)]

    def request() -> np.ndarray:
        with torch.inference_mode():
            out = [
                finish(_Spec, model(Batch.from_sequences([e.ids for e in b]).packed().to(device)).float().cpu().numpy())
                for b in batches
            ]
        return np.concatenate(out)  # the copy to CPU waits for the device

    request()  # warm-up: kernels chosen, allocator grown
    times = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        logits = request()
        times.append(time.perf_counter() - t)
    ms = statistics.median(times) * 1000
    flops = model_flops(
        [len(e) for e in items],
        c.num_hidden_layers,
        c.hidden_size,
        c.num_key_value_heads * c.head_dim,
        c.intermediate_size,
    )
    mfu = flops / (ms / 1000) / (args.peak_tflops * 1e12)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}, {args.dtype}, {args.layers} layers, {args.passages} passages x {args.tokens} tokens, "
        f"{len(batches)} micro-batches of <= {args.max_batch_tokens} tokens"
    )
    print(
        f"request latency: median {ms:.0f} ms, min {min(times) * 1000:.0f} ms over {args.rounds} rounds; "
        f"{flops / 1e12:.1f} TFLOP -> {flops / (ms / 1000) / 1e12:.1f} TFLOP/s = {mfu:.1%} of {args.peak_tflops:g}"
    )
    print(f"logits finite: {bool(np.isfinite(logits).all())}, shape {tuple(logits.shape)}")


class _Spec:  # what finish() reads from a ModelSpec for a cross-encoder
    kind = "cross-encoder"
    temperature = 1.0


if __name__ == "__main__":
    main()
