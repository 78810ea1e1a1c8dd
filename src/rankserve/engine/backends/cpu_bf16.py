"""Mixed bf16 on CPU: the layers' products and attention in bfloat16, the residual stream in float32.

Why not the whole model in bf16 (``model.to(bfloat16)``, what ``--dtype bfloat16`` does on a GPU):
on CPU that rounds the residual stream and every LayerNorm to 8 mantissa bits, and it ran only
1.42-1.45x fp32. Here only the linear layers inside the repeated blocks run in bf16 and hand bf16
to the next bf16 step (attention, GELU/SiLU, the next linear); adding a bf16 block output to the
float32 residual promotes it back, so LayerNorm/RMSNorm, pooling and the head stay float32. On a
CPU with native bf16 (AVX512-BF16 or AMX) that ran the all-MiniLM-L6-v2 man-page workload 1.49x
fp32 with top-5 agreement 0.992 and Kendall tau 0.997 (dynamic int8 reached 0.92-0.96 top-5:
``docs/benchmarks-int8.md``). Without native bf16, oneDNN emulates it and it is slower than fp32.
It is opt-in (``--dtype bfloat16``): ``--dtype auto`` keeps the exact float32 path (``choose``).

The swap is a class change plus a bf16 copy of each swapped weight in place of the fp32 one (half
the memory); the head's linears (pooler, classifier, score) keep float32 so that logits are not
rounded to bf16's ~3 significant digits, which would tie close candidates.
"""

from __future__ import annotations

import logging
import re

import torch
import torch.nn.functional as F
from torch import nn

from rankserve.engine.backends.cpu import bf16_native
from rankserve.engine.backends.cpu_gemm import OneDnnLinear, TorchLinear, bucket_rows, tracing

log = logging.getLogger("rankserve")

BLOCK = re.compile(r"(^|\.)layers?\.\d+\.")  # linears inside the repeated blocks (BERT and Llama names)


class Bf16Linear(nn.Linear):
    """A linear layer holding bf16 weights: input cast to bf16, output left in bf16."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 2 or tracing():
            return F.linear(x.to(self.weight.dtype), self.weight, self.bias)
        # oneDNN product with bounded shapes (cpu_gemm.ROW_BUCKET): cast straight into the padded
        # buffer (one pass over the activations, not a cast and then a padded copy).
        rows = x.shape[0]
        padded = bucket_rows(rows)
        buf = x.new_empty((padded, x.shape[1]), dtype=self.weight.dtype)
        buf[:rows].copy_(x)
        buf[rows:].zero_()
        out = F.linear(buf, self.weight, self.bias)
        return out if padded == rows else out[:rows]


def block_linears(module: nn.Module) -> list[nn.Linear]:
    return [
        m
        for name, m in module.named_modules()
        if type(m) in (nn.Linear, TorchLinear, OneDnnLinear, Bf16Linear) and BLOCK.search(name)
    ]


def use_bf16(module: nn.Module) -> int:
    """Swap the linears inside ``module``'s repeated blocks to ``Bf16Linear``; -> how many."""
    linears = block_linears(module)
    for m in linears:
        m.__class__ = Bf16Linear
        m.weight = nn.Parameter(m.weight.detach().bfloat16(), requires_grad=False)
        if m.bias is not None:
            m.bias = nn.Parameter(m.bias.detach().bfloat16(), requires_grad=False)
    return len(linears)


def choose(module: nn.Module, dtype: str) -> str:
    """The CPU precision for ``--dtype`` (auto | float32 | bfloat16). auto is float32: the exact path,
    whose scores do not depend on what else is in flight (batch invariance, docs/batch-invariance.md).
    Mixed bf16 ran 1.49x faster where the CPU has native bf16, but a pair's logit then moved by up to
    6.9e-4 with its batch-mates (a 32-client soak on an AMX host) and ties swapped between identical
    requests, so it is opt-in (``--dtype bfloat16``). The log says when this CPU would run it natively."""
    if dtype != "auto":
        return dtype
    if block_linears(module) and bf16_native():
        log.info(
            "cpu precision: float32 (auto keeps the exact, batch-invariant path; this CPU has native "
            "bf16: --dtype bfloat16 runs faster, with load-dependent scores)"
        )
    else:
        log.info("cpu precision: float32")
    return "float32"
