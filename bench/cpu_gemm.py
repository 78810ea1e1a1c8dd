"""fp32 GEMM libraries on this CPU: torch's default (MKL here), oneDNN (engine/backends/cpu_gemm.py), and
onnxruntime's MatMul (its CPU backend), on the linear-layer shapes of the models served, same
process, best of repeats. Shows what ``--cpu-gemm auto`` chooses between, and why.

    python bench/cpu_gemm.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of  # noqa: E402

from rankserve.engine.backends.cpu import available_cores  # noqa: E402
from rankserve.engine.backends.cpu_gemm import onednn_available, onednn_linear  # noqa: E402

SHAPES = {  # name: (rows, in, out)
    "MiniLM q/k/v, 4096 tokens": (4096, 384, 384),
    "MiniLM MLP in, 1024-row slice": (1024, 384, 1536),
    "MiniLM MLP out, 1024-row slice": (1024, 1536, 384),
    "Llama-1B q_proj, 1024 rows": (1024, 2048, 2048),
    "Llama-1B up_proj, 1024 rows": (1024, 2048, 8192),
}


def onnx_matmul(x: torch.Tensor, weight: torch.Tensor):
    """An onnxruntime session of one MatMul + Add with ``weight`` as an initializer."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rows, fan_in = x.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, fan_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, weight.shape[0]])],
        [numpy_helper.from_array(weight.t().contiguous().numpy(), "W")],
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
    )
    feed = {"x": x.numpy()}
    return lambda: session.run(["y"], feed)


def best(fn, repeats: int) -> float:
    """Best seconds over ``repeats`` after one warm-up call."""
    fn()
    return best_of(fn, repeats)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(available_cores())
    try:
        import onnxruntime  # noqa: F401

        have_ort = True
    except ImportError:
        have_ort = False
    print(
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    print("| shape (rows x in -> out) | torch default GFLOP/s | oneDNN | onnxruntime | oneDNN / torch |")
    print("|---|---:|---:|---:|---:|")
    with torch.inference_mode():
        for name, (rows, fan_in, fan_out) in SHAPES.items():
            x, w = torch.randn(rows, fan_in), torch.randn(fan_out, fan_in)
            flops = 2 * rows * fan_in * fan_out / 1e9
            rate = {"torch": flops / best(lambda: F.linear(x, w), args.repeats)}
            if onednn_available():
                rate["onednn"] = flops / best(lambda: onednn_linear(x, w, None), args.repeats)
            if have_ort:
                rate["ort"] = flops / best(onnx_matmul(x, w), args.repeats)
            cell = lambda k: f"{rate[k]:.0f}" if k in rate else "-"  # noqa: E731
            ratio = f"{rate['onednn'] / rate['torch']:.2f}x" if "onednn" in rate else "-"
            print(
                f"| {name}: {rows} x {fan_in} -> {fan_out} | {cell('torch')} | {cell('onednn')} | {cell('ort')} | {ratio} |"
            )


if __name__ == "__main__":
    main()
