"""The exported graph's interface, shared by the exporter (onnx_export.py, torch) and the runtimes
(onnx_runner.py, openvino_runner.py, torch-free): its opset, its input names, and how a batch of
encoded items becomes those inputs, in numpy.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from rankserve.engine.tokenize import Encoded

INPUTS = ("input_ids", "token_type_ids", "position_ids", "indices", "cu_seqlens", "lengths", "key_mask")
OPSET = 23  # the first with a fused Attention op


def graph_inputs(items: Sequence[Encoded]) -> dict[str, np.ndarray]:
    """Encoded items -> the exported graph's inputs: ``Batch.packed()``'s tensors for right-padded
    sequences (tests/engine/test_onnx_start.py checks they are equal), in numpy: tokens laid end
    to end, each one's position and place in the [B, T] grid, sequence offsets and the key mask."""
    if not items or any(len(it) == 0 for it in items):
        raise ValueError("a batch needs at least one sequence, each of at least one token")
    lengths = np.fromiter((len(it) for it in items), dtype=np.int64, count=len(items))
    cu = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    total = int(cu[-1])
    ids = np.fromiter(itertools.chain.from_iterable(it.ids for it in items), dtype=np.int64, count=total)
    if items[0].type_ids is not None:
        types = np.fromiter(
            itertools.chain.from_iterable(it.type_ids or () for it in items), dtype=np.int64, count=total
        )
    else:
        types = np.zeros(total, dtype=np.int64)
    key_mask = np.arange(int(lengths.max()), dtype=np.int64) < lengths[:, None]
    return dict(
        input_ids=ids,
        token_type_ids=types,
        position_ids=np.arange(total, dtype=np.int64) - np.repeat(cu[:-1], lengths),
        indices=np.flatnonzero(key_mask),
        cu_seqlens=cu,
        lengths=lengths,
        key_mask=key_mask,
    )
