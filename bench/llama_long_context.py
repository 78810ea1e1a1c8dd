"""One 8192-token pair through a Llama-3.2-1B-shaped bidirectional reranker on CPU: peak memory and time.

The model is ours (``rankserve.models.llama``) with random weights: 16 layers, hidden 2048, 32 query /
8 KV heads (head_dim 64), SwiGLU 8192, llama3 RoPE scaling as in Llama 3.2, mean pooling and a
``score`` head. The vocabulary is cut to 32000 (from 128256) to save RAM; it only sizes the
embedding table, which is a lookup. What it shows: attention over 8192 tokens never holds a full
score matrix (one fp32 head alone would be 8192^2 x 4 B = 256 MiB, a layer's 32 heads 8 GiB), so
the peak stays a few hundred MiB above the weights.

    python bench/llama_long_context.py                       # fp32, 16 layers
    python bench/llama_long_context.py --dtype bfloat16 --layers 1

bf16 matmuls on a CPU without AVX512-BF16/AMX are emulated and ~8x slower than fp32, so a full
16-layer bf16 pass can take hours there; ``--layers`` lets you measure one layer (the activation
peak is per layer: layers run one after another).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time

import torch

from rankserve.models.batch import Batch
from rankserve.models.llama import LlamaConfig, LlamaForSequenceClassification

MIB = 1024 * 1024


def rss_now() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def rss_peak() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build(layers: int, vocab: int, dtype: torch.dtype) -> LlamaForSequenceClassification:
    c = LlamaConfig.from_hf(
        dict(
            vocab_size=vocab,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=layers,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=32.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8192,
            ),
        )
    )
    with torch.device("meta"):  # allocate once, directly in the target dtype
        model = LlamaForSequenceClassification(c, pooling="mean").to(dtype)
    model.to_empty(device="cpu").eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(0.02).to(dtype))
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = all available cores")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    start_rss = rss_now()
    t0 = time.perf_counter()
    model = build(args.layers, args.vocab, dtype)
    gc.collect()
    params = sum(p.numel() for p in model.parameters())
    weights_rss, weights_peak = rss_now(), rss_peak()
    print(
        f"model: {args.layers} layers, {params / 1e9:.3f} B params, {args.dtype}, "
        f"{params * model.score.weight.element_size() / MIB:.0f} MiB of weights; built in {time.perf_counter() - t0:.1f} s"
    )

    gen = torch.Generator().manual_seed(1)
    ids = [0] + torch.randint(1, args.vocab, (args.tokens - 1,), generator=gen).tolist()  # BOS + one long pair
    packed = Batch.from_sequences([ids]).packed()
    t0 = time.perf_counter()
    with torch.inference_mode():
        logit = model(packed).float()
    seconds = time.perf_counter() - t0
    peak = rss_peak()
    full_head = args.tokens**2 * 4 / MIB
    print(f"tokens: {args.tokens}, threads: {torch.get_num_threads()}, logit: {logit.item():.4f}")
    print(
        f"RSS before model: {start_rss:.0f} MiB; with weights: {weights_rss:.0f} MiB (peak so far {weights_peak:.0f} MiB)"
    )
    print(f"peak RSS during the forward pass: {peak:.0f} MiB = weights + {peak - weights_rss:.0f} MiB")
    print(
        f"for scale: one fp32 {args.tokens}x{args.tokens} score matrix = {full_head:.0f} MiB per head, "
        f"{full_head * 32 / 1024:.1f} GiB for a layer's 32 heads"
    )
    print(f"forward time: {seconds:.1f} s ({seconds / args.layers:.1f} s per layer)")


if __name__ == "__main__":
    main()
