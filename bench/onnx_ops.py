"""Where ONNX Runtime spends its time: rankserve's packed export against optimum's padded one.

Issue 32: offline (every pair in one call), sentence-transformers' int8 / bf16 graphs ran ahead of
rankserve's lossy modes, while in fp32 the two tied. The guess in docs/benchmarks.md was the graph's
shape: optimum exports the plain padded BERT ([B, T] everywhere, which ONNX Runtime fuses), rankserve
exports the packed batch (linear layers on real tokens only, a scatter to the [B, T] grid and a
gather back around each attention, for batch invariance). This measures that guess with the
quantization held equal: both fp32 graphs, and both quantized by rankserve's own ``quantize_int8``
(dynamic, per channel, reduce_range), run on the same length-sorted batches of 32 pairs, in one
process, interleaved rounds. It prints pairs/s and ONNX Runtime's own profile summed by op type
(the share of the run each kind of node took), so the difference has names.

The optimum export comes from the sentence-transformers venv (``--st-python``), as in
bench/cpu_peers.py.

    python bench/onnx_ops.py --st-python /tmp/peers/venv-st/bin/python [--requests 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_line, minilm_cross_encoder  # noqa: E402

from rankserve import loadgen  # noqa: E402
from rankserve.engine.backends.cpu import available_cores  # noqa: E402
from rankserve.engine.backends.onnx_export import quantize_int8  # noqa: E402
from rankserve.engine.backends.onnx_graph import graph_inputs  # noqa: E402
from rankserve.engine.backends.onnx_runner import exported_model, session_options  # noqa: E402
from rankserve.engine.engine import tokenizer_policy  # noqa: E402
from rankserve.engine.tokenize import Encoded  # noqa: E402
from rankserve.models.batch import Batch  # noqa: E402
from rankserve.models.loader import load_model  # noqa: E402

BENCH = Path(__file__).parent
BATCH = 32  # sentence-transformers' batch size, sorted by length as it sorts


def batches(policy, n_requests: int, seed: int = 3) -> list[list[Encoded]]:
    """bench/cpu_peers.py's requests (``loadgen.make_requests``: 10-50 passages of 16-256 words),
    every pair sorted by length and cut into batches of 32."""
    pairs: list[Encoded] = []
    for body in loadgen.make_requests(n_requests, (10, 50), (16, 256), seed):
        pairs += policy.pairs(body["query"]["text"], [p["text"] for p in body["passages"]], "END")
    pairs.sort(key=len)
    return [pairs[s : s + BATCH] for s in range(0, len(pairs), BATCH)]


def padded_inputs(items: list[Encoded], pad_id: int) -> dict[str, np.ndarray]:
    """optimum's inputs: [B, T] ids, attention mask and token types, right-padded (``Batch``'s padding)."""
    batch = Batch.from_sequences([it.ids for it in items], [it.type_ids or [0] * len(it) for it in items], pad_id)
    assert batch.token_type_ids is not None
    return dict(
        input_ids=batch.input_ids.numpy(),
        attention_mask=batch.attention_mask.numpy(),
        token_type_ids=batch.token_type_ids.numpy(),
    )


def session(path: Path, profile: str | None = None):
    import onnxruntime as ort

    options = session_options()  # as OnnxRunner sets it up
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    names = [i.name for i in sess.get_inputs()]
    return np.concatenate([sess.run(None, {k: f[k] for k in names})[0].reshape(-1) for f in feeds])


def op_shares(profile_file: str) -> dict[str, float]:
    """ONNX Runtime's profile -> op type: share of the nodes' summed time."""
    events = json.loads(Path(profile_file).read_text())
    per: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per[e["args"]["op_name"]] += e["dur"]
    total = sum(per.values()) or 1
    return {op: us / total for op, us in per.most_common()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--st-python", required=True, help="the sentence-transformers venv's python (optimum export)")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--top-ops", type=int, default=8)
    args = ap.parse_args()
    work = Path(tempfile.gettempdir()) / "rankserve-bench-onnx-ops"
    model_dir = minilm_cross_encoder(Path("/tmp/rankserve-bench-minilm-ce"))
    spec = load_model(model_dir)
    out = subprocess.run(
        [args.st_python, str(BENCH / "peer_scorers.py"), "export", str(model_dir), str(work)],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        sys.exit(f"optimum export failed: {out.stderr.strip().splitlines()[-1:]}")
    optimum_fp32 = work / "onnx" / "model.onnx"
    optimum_int8 = work / "optimum-int8.onnx"
    if not optimum_int8.exists():
        quantize_int8(optimum_fp32, optimum_int8)

    def padded(items: list[Encoded]) -> dict[str, np.ndarray]:
        return padded_inputs(items, spec.pad_id)

    graphs = {
        "rankserve packed fp32": (exported_model(spec, "none"), graph_inputs),
        "optimum padded fp32": (optimum_fp32, padded),
        "rankserve packed int8": (exported_model(spec, "int8"), graph_inputs),
        "optimum padded int8 (same quantizer)": (optimum_int8, padded),
    }
    work_batches = batches(tokenizer_policy(spec), args.requests)
    n = sum(len(b) for b in work_batches)
    tokens = sum(len(it) for b in work_batches for it in b)
    padded = sum(len(b) * max(len(it) for it in b) for b in work_batches)
    print(
        f"{cpu_line()}; {available_cores()} threads; {args.requests} requests, {n} pairs, {len(work_batches)} "
        f"batches of {BATCH}; {tokens} real tokens, {padded} padded ({padded / tokens:.2f}x)"
    )
    feeds = {name: [fn(b) for b in work_batches] for name, (_, fn) in graphs.items()}
    sessions = {name: session(path) for name, (path, _) in graphs.items()}
    best = dict.fromkeys(graphs, float("inf"))
    scores = {}
    for name, sess in sessions.items():
        run(sess, feeds[name][:1])  # warm-up
    for _ in range(args.rounds):  # interleaved: the host is shared
        for name, sess in sessions.items():
            t = time.perf_counter()
            scores[name] = run(sess, feeds[name])
            best[name] = min(best[name], time.perf_counter() - t)
    ref = scores["rankserve packed fp32"]
    print("\n| graph | pairs/s | vs rankserve packed (same precision) | max abs d-logit vs rankserve fp32 |")
    print("|---|---:|---:|---:|")
    for name in graphs:
        same = "rankserve packed int8" if "int8" in name else "rankserve packed fp32"
        print(
            f"| {name} | {n / best[name]:.1f} | {best[same] / best[name]:.2f}x | {np.abs(scores[name] - ref).max():.1e} |"
        )
    print("\nShare of node time by op type (one profiled round each):")
    for name, (path, _) in graphs.items():
        sess = session(path, profile=str(work / name.replace(" ", "-")))
        run(sess, feeds[name])
        shares = op_shares(sess.end_profiling())
        top = ", ".join(f"{op} {share:.0%}" for op, share in list(shares.items())[: args.top_ops])
        print(f"- {name}: {top}")


if __name__ == "__main__":
    main()
