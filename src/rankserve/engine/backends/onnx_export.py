"""Exporting a loaded torch model to ONNX (and dynamic int8): the only part of the ONNX backends that
needs torch, imported when no cached export exists (engine/backends/onnx_runner.py).

The graph is our own module from ``models/`` traced by ``torch.onnx.export`` (dynamo) through
``PackedInputs``: the packed tensors (``onnx_graph.graph_inputs``) are the graph's inputs, so ONNX
Runtime and OpenVINO run the same packed math as torch (linear layers and MLPs on real tokens only,
attention on the re-padded grid) and the model code is not duplicated here.

int8 (lossy, opt-in): ``quantize_dynamic`` on the weight MatMuls: int8 weights per output channel,
uint8 activations quantized per tensor at run time, ``reduce_range`` (7-bit weights) so that u8s8
products cannot saturate on CPUs without VNNI. Embeddings, LayerNorm, softmax and the attention
products stay fp32. Linear layers are exported as Gemm; ``gemm_to_matmul`` rewrites them first.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from rankserve.engine.backends.onnx_graph import INPUTS, OPSET, graph_inputs
from rankserve.engine.tokenize import Encoded
from rankserve.models.batch import Packed
from rankserve.models.spec import ModelSpec, to_json

log = logging.getLogger("rankserve")

LARGE = 1 << 30  # bytes of a graph past which weights go to an external .data file
# A small batch with distinct B, T, N (so the exporter keeps every axis dynamic); ids are traced
# through, never looked at, so any small ids do.
SAMPLE = [Encoded([2 + i % 40 for i in range(n)], [0] * n) for n in (5, 3, 7)]


class PackedInputs(nn.Module):
    """The traceable face of a packed model: Packed's tensors in, the module's output out."""

    def __init__(self, module: nn.Module, with_types: bool):
        super().__init__()
        self.module = module
        self.with_types = with_types

    def forward(self, input_ids, token_type_ids, position_ids, indices, cu_seqlens, lengths, key_mask):
        p = Packed(
            input_ids=input_ids,
            token_type_ids=token_type_ids if self.with_types else None,
            position_ids=position_ids,
            indices=indices,
            cu_seqlens=cu_seqlens,
            lengths=lengths,
            key_mask=key_mask,
            batch_size=key_mask.shape[0],
            seq_len=key_mask.shape[1],
            full=False,
        )  # one graph for every batch: always the masked attention path
        return self.module(p)


def attention_op(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
):
    """SDPA -> one ONNX ``Attention`` (opset 23) node, a fused kernel in onnxruntime; the default
    translation is a chain of ~10 elementwise ops over the [B, nh, T, T] scores. onnxruntime wants
    the mask's query axis spelled out, so the [B, 1, 1, T] key mask is expanded to [B, 1, T, T]."""
    from onnxscript import opset23 as op

    if attn_mask is not None:
        shape = op.Concat(
            op.Shape(query, start=0, end=1),
            op.Constant(value_ints=[1]),
            op.Shape(query, start=2, end=3),
            op.Shape(key, start=2, end=3),
            axis=0,
        )
        attn_mask = op.Expand(attn_mask, shape)
    out, _, _, _ = op.Attention(query, key, value, attn_mask, scale=scale, is_causal=is_causal)
    return out


@contextlib.contextmanager
def quiet():
    """Silence the exporter's and quantizer's chatter (stdout, warnings, log records below ERROR)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def export_fp32(spec: ModelSpec, path: Path) -> None:
    """Trace ``spec.module`` (a float32 CPU copy) to ONNX with dynamic batch, length and token axes."""
    module = spec.module
    param = next(module.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        log.warning("ONNX export: a float32 CPU copy of a %s model on %s", param.dtype, param.device)
        module = copy.deepcopy(module).to(device="cpu", dtype=torch.float32)
    wrapper = PackedInputs(module, with_types=spec.token_types).eval()
    args = tuple(torch.from_numpy(a) for a in graph_inputs(SAMPLE).values())
    n, b, t, b1 = (torch.export.Dim(x) for x in ("N", "B", "T", "B1"))
    dims = dict(
        input_ids={0: n},
        token_type_ids={0: n},
        position_ids={0: n},
        indices={0: n},
        cu_seqlens={0: b1},
        lengths={0: b},
        key_mask={0: b, 1: t},
    )
    with quiet(), torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            args,
            input_names=list(INPUTS),
            output_names=["out"],
            dynamic_shapes=dims,
            dynamo=True,
            verbose=False,
            opset_version=OPSET,
            custom_translation_table={torch.ops.aten.scaled_dot_product_attention.default: attention_op},
        )
        program.save(str(path), external_data=sum(t.numel() * 4 for t in module.state_dict().values()) > LARGE)


def gemm_to_matmul(model) -> int:
    """Rewrite Gemm(x, W, b) as MatMul + Add: dynamic quantization handles MatMul, not Gemm."""
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes, rewritten = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm"
            or node.input[1] not in inits
            or attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T.copy()
        w_name = f"{node.input[1]}__matmul_{rewritten}"
        model.graph.initializer.append(numpy_helper.from_array(weight, w_name))
        out = node.output[0]
        mm_out = out if len(node.input) < 3 or not node.input[2] else f"{out}__matmul"
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{node.name}_MatMul"))
        if mm_out != out:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [out], name=f"{node.name}_Add"))
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for node in model.graph.node for i in node.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    return rewritten


def quantize_int8(fp32: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32))
    n = gemm_to_matmul(model)
    big = model.ByteSize() > LARGE
    staged = fp32.with_name("matmul.onnx")
    onnx.save(model, str(staged), save_as_external_data=big)
    del model
    with quiet():  # the quantizer logs every tensor at INFO on the root logger
        quantize_dynamic(
            staged,
            out,
            weight_type=QuantType.QInt8,
            reduce_range=True,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            use_external_data_format=big,
        )
    log.info("int8: %d linear layers quantized (dynamic, per-channel, reduce_range)", n)


def export(spec: ModelSpec, folder: Path, quantize: str) -> None:
    """Write ``folder`` (model.onnx, fp32 or int8, and spec.json) for ``spec``, atomically: a
    concurrent start sees the whole folder or none."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=folder.name + ".") as tmp:
        stage = Path(tmp) / "out"
        (stage / "fp32").mkdir(parents=True)
        export_fp32(spec, stage / "fp32" / "model.onnx")
        if quantize == "int8":
            quantize_int8(stage / "fp32" / "model.onnx", stage / "model.onnx")
            shutil.rmtree(stage / "fp32")
        else:
            for f in (stage / "fp32").iterdir():  # model.onnx (and model.onnx.data past 2 GB)
                f.rename(stage / f.name)
            (stage / "fp32").rmdir()
        (stage / "spec.json").write_text(to_json(spec), encoding="utf-8")
        try:
            stage.rename(folder)
        except OSError:
            if not (folder / "model.onnx").is_file():
                raise
    log.info("exported %s (%s) to %s in %.1fs", spec.architecture, quantize, folder, time.perf_counter() - started)
