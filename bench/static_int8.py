"""Static (calibrated) int8 with OpenVINO NNCF against dynamic int8 and float32, on man-page queries.

Issue 32 asks whether a calibrated int8 keeps the ranking (top-5 >= 0.98) where bf16 is not native
(AVX2 hosts) while dynamic int8 (onnxruntime, ``--quantize int8``) keeps 0.81-0.94. This measures it
on rankserve's own ONNX export of the MiniLM-L6 cross-encoder (``onnx_runner.exported_model``),
below the engine: the same length-sorted batches of 16 pairs go through each compiled model
(onnxruntime's through the served ``OnnxRunner``).

The man-page workload (real queries and their BM25 top-40 candidates) is split by query: the first
half calibrates (and, with ``--accuracy-control``, validates NNCF's search for layers to keep in
float32), the second half is measured. Contenders: OpenVINO float32 (the reference, within 1e-5 of
torch), NNCF ``quantize`` with the transformer model type (per-tensor activations from the
calibration batches), the same with SmoothQuant at alpha 0.95 and the MIXED preset, optionally
``quantize_with_accuracy_control`` (max top-5 drop 0.015), and onnxruntime dynamic int8.

Needs ``pip install nncf`` (not a rankserve dependency: nothing here is served yet).

    python bench/static_int8.py [--queries 48] [--rounds 3] [--accuracy-control]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_line, manpage_workload, minilm_cross_encoder  # noqa: E402
from int8 import agreement, top_k_overlap  # noqa: E402

from rankserve.engine.backends.cpu import available_cores  # noqa: E402
from rankserve.engine.backends.onnx_graph import graph_inputs  # noqa: E402
from rankserve.engine.backends.onnx_runner import OnnxRunner, exported_model  # noqa: E402
from rankserve.engine.engine import tokenizer_policy  # noqa: E402
from rankserve.engine.outputs import finish  # noqa: E402
from rankserve.engine.tokenize import Encoded  # noqa: E402
from rankserve.models.loader import load_model  # noqa: E402
from rankserve.models.spec import ModelSpec  # noqa: E402

Batches = list[tuple[list[int], list[Encoded]]]  # one query: (pair indices, encoded pairs) per batch


def query_batches(policy, query: str, passages: list[str], size: int = 16) -> Batches:
    """The query's pairs, sorted by length and cut into batches of ``size`` (as the batcher would)."""
    enc = policy.pairs(query, passages, "END")
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    return [(order[s : s + size], [enc[i] for i in order[s : s + size]]) for s in range(0, len(order), size)]


class OvScorer:
    """An NNCF-quantized (or float32) OpenVINO model behind the Runner contract (``forward(items)``),
    compiled as ``OpenVinoRunner`` compiles: that runner only takes the export's file, these are
    in-memory models."""

    def __init__(self, spec: ModelSpec, compiled):
        self.spec = spec
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.names = [i.get_any_name() for i in compiled.inputs]

    def forward(self, items: list[Encoded]) -> np.ndarray:
        arrays = graph_inputs(items)
        out = self.request.infer({k: arrays[k] for k in self.names})[self.compiled.output(0)]
        return finish(self.spec, out)


def score(forward: Callable[[list[Encoded]], np.ndarray], queries: list[Batches]) -> list[list[float]]:
    out = []
    for batches in queries:
        s = np.zeros(sum(len(i) for i, _ in batches), dtype=np.float32)
        for idx, items in batches:
            s[idx] = forward(items)
        out.append(s.tolist())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=48, help="half calibrate, half are measured")
    ap.add_argument("--per-query", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--accuracy-control", action="store_true", help="also NNCF's accuracy-aware search (slow)")
    args = ap.parse_args()
    import nncf
    import openvino as ov

    threads = available_cores()
    directory = minilm_cross_encoder(Path("/tmp/rankserve-bench-minilm-ce"))
    spec = load_model(directory)
    policy = tokenizer_policy(spec)
    work = manpage_workload(args.queries, args.per_query)
    half = len(work) // 2
    calib = [query_batches(policy, q, ps) for q, ps in work[:half]]
    test = [query_batches(policy, q, ps) for q, ps in work[half:]]
    print(
        f"{cpu_line()}; {threads} threads; openvino {ov.__version__}, nncf {nncf.__version__}; "
        f"{half} calibration queries, {len(test)} measured, {args.per_query} passages each"
    )
    core = ov.Core()
    props = {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": threads,
        "ENABLE_CPU_PINNING": False,
    }

    def compiled(model) -> Callable[[list[Encoded]], np.ndarray]:
        return OvScorer(spec, core.compile_model(model, "CPU", props)).forward

    base = core.read_model(str(exported_model(spec, "none")))
    scorers = {"openvino f32 (reference)": compiled(base)}
    dataset = nncf.Dataset([graph_inputs(items) for q in calib for _, items in q])
    n_calib = sum(len(q) for q in calib)
    variants = {
        "nncf static int8 (transformer)": dict(model_type=nncf.ModelType.TRANSFORMER),
        "nncf static int8 (transformer, mixed preset, SmoothQuant 0.95)": dict(
            model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset.MIXED,
            advanced_parameters=nncf.AdvancedQuantizationParameters(
                smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=0.95)
            ),
        ),
    }
    calib_ref = score(scorers["openvino f32 (reference)"], calib)
    for name, kw in variants.items():
        t = time.perf_counter()
        quantized = nncf.quantize(base, dataset, subset_size=n_calib, **kw)
        scorers[name] = compiled(quantized)
        _, top5, _ = agreement(calib_ref, score(scorers[name], calib))
        print(
            f"  {name}: calibrated in {time.perf_counter() - t:.0f}s, top-5 on the calibration queries {top5:.3f}",
            flush=True,
        )
    if args.accuracy_control:

        def validate(model, data) -> float:  # model: NNCF hands over a compiled model
            got = score(OvScorer(spec, model).forward, [b for b, _ in data])
            return statistics.mean(top_k_overlap(r, g) for (_, r), g in zip(data, got))

        t = time.perf_counter()
        quantized = nncf.quantize_with_accuracy_control(
            base,
            dataset,
            nncf.Dataset(list(zip(calib, calib_ref))),
            validation_fn=validate,
            max_drop=0.015,
            drop_type=nncf.DropType.ABSOLUTE,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=n_calib,
        )
        scorers["nncf static int8 (accuracy control, drop <= 0.015)"] = compiled(quantized)
        print(f"  accuracy control: {time.perf_counter() - t:.0f}s")
    scorers["onnxruntime dynamic int8 (--quantize int8)"] = OnnxRunner(spec, threads, quantize="int8").forward

    best = dict.fromkeys(scorers, float("inf"))
    scores = {}
    for r in range(args.rounds):  # interleaved
        for name, scorer in scorers.items():
            t = time.perf_counter()
            scores[name] = score(scorer, test)
            best[name] = min(best[name], time.perf_counter() - t)
            print(f"  round {r + 1}: {name} {time.perf_counter() - t:.1f}s", flush=True)  # a cut-off run keeps these
    ref_name = "openvino f32 (reference)"
    n = sum(len(s) for s in scores[ref_name])
    print(f"\n{n} measured pairs, best of {args.rounds} rounds")
    print("| contender | pairs/s | vs openvino f32 | max abs d-logit | top-5 overlap | Kendall tau |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in scorers:
        delta, top5, tau = agreement(scores[ref_name], scores[name])
        print(
            f"| {name} | {n / best[name]:.1f} | {best[ref_name] / best[name]:.2f}x | {delta:.2e} | {top5:.3f} | {tau:.3f} |"
        )


if __name__ == "__main__":
    main()
