"""engine/backends/cpu_bf16.py: mixed bf16 on CPU (block products in bf16, residual stream, norms and head in
float32), that ``--dtype auto`` keeps float32, and the per-machine cache of the GEMM timings."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import app_client, wait_ready
from llama_checkpoints import make_nvidia_reranker
from torch import nn

from rankserve.engine.backends import cpu_bf16, cpu_gemm
from rankserve.engine.backends.cpu_bf16 import Bf16Linear, choose, use_bf16
from rankserve.engine.backends.torch_runner import TorchRunner
from rankserve.engine.tokenize import TokenizerPolicy
from rankserve.models.loader import load_model
from rankserve.models.model_dir import default_model_dir

CPU = torch.device("cpu")
QUERY = "how do I list the files in a directory"
PASSAGES = [
    "ls lists directory contents, sorted alphabetically by default",
    "gzip reduces the size of the named files using Lempel-Ziv coding",
    "the cat sat on the mat and looked at the files",
    "find searches for files in a directory hierarchy",
    "Paris is the capital and most populous city of France",
]


def linear_types(module: nn.Module) -> dict[str, type]:
    return {name: type(m) for name, m in module.named_modules() if isinstance(m, nn.Linear)}


def encoded(spec, with_types: bool):
    policy = TokenizerPolicy(
        str(spec.tokenizer_file),
        max_length=spec.max_length,
        rerank_template=spec.rerank_template,
        with_type_ids=with_types,
    )
    if spec.kind == "cross-encoder":
        return policy.pairs(QUERY, PASSAGES, "END")
    return policy.texts([QUERY, *PASSAGES], "END", "", "input")


def test_bert_only_block_linears_swap_and_the_rest_stays_float32(bert_ce_dir):
    spec = load_model(bert_ce_dir)
    layers = spec.module.bert.config.num_hidden_layers
    assert use_bf16(spec.module) == 6 * layers  # q, k, v, attention output, intermediate, output
    for name, kind in linear_types(spec.module).items():
        assert (kind is Bf16Linear) == (".layer." in name), name
    assert spec.module.bert.pooler.dense.weight.dtype == torch.float32  # head: logits not rounded to bf16
    assert spec.module.classifier.weight.dtype == torch.float32
    norms = [m for m in spec.module.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    seen = []
    hook = norms[-1].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    logits = torch.from_numpy(TorchRunner(spec, CPU, threads=1, dtype="bfloat16").forward(encoded(spec, True)))
    hook.remove()
    assert seen == [torch.float32]  # residual + LayerNorm ran in float32
    assert logits.dtype == torch.float32 and logits.shape == (len(PASSAGES),)


def test_llama_block_linears_swap_and_score_head_stays_float32(tmp_path):
    spec = load_model(make_nvidia_reranker(tmp_path))
    layers = len(spec.module.model.layers)
    assert use_bf16(spec.module) == 7 * layers  # q, k, v, o, gate, up, down
    assert spec.module.score.weight.dtype == torch.float32
    for name, kind in linear_types(spec.module).items():
        assert (kind is Bf16Linear) == (".layers." in name), name


@pytest.mark.parametrize("which", ["bert-ce", "llama-rr"])
def test_tiny_checkpoints_in_mixed_bf16_stay_near_float32(which, bert_ce_dir, tmp_path):
    """A loose bound: a tiny random model's logits crowd, and bf16's 8-bit mantissa moves them by
    up to ~13 % of their spread (measured on the BERT one); broken wiring moves them by far more."""
    directory = bert_ce_dir if which == "bert-ce" else make_nvidia_reranker(tmp_path)
    fp32 = load_model(directory)
    items = encoded(fp32, which == "bert-ce")
    ref = torch.from_numpy(TorchRunner(fp32, CPU, threads=1, dtype="float32").forward(items))
    mixed = TorchRunner(load_model(directory), CPU, threads=1, dtype="bfloat16")
    assert mixed.precision == "bfloat16"
    got = torch.from_numpy(mixed.forward(items))
    assert ref.std().item() > 1e-2  # the bound below can fail: the logits differ between passages
    assert 0 < (got - ref).abs().max().item() <= 0.25 * ref.std().item()


def test_real_embedder_in_mixed_bf16_keeps_vectors_and_order():
    """all-MiniLM-L6-v2 (trained): each vector within cosine 0.9999 of fp32, the same passage order,
    and nearer fp32 than the whole model cast to bf16 (the point of a float32 residual stream:
    measured max |diff| 8.0e-4 against 1.5e-3)."""
    directory = default_model_dir()
    items = encoded(load_model(directory), True)
    ref = torch.from_numpy(TorchRunner(load_model(directory), CPU, threads=1, dtype="float32").forward(items))
    got = torch.from_numpy(TorchRunner(load_model(directory), CPU, threads=1, dtype="bfloat16").forward(items))
    whole = torch.from_numpy(TorchRunner(load_model(directory, dtype=torch.bfloat16), CPU, threads=1).forward(items))
    cos = (ref * got).sum(-1)  # both L2-normalized
    assert cos.min().item() >= 0.9999, cos
    assert 0 < (ref - got).abs().max().item() < (ref - whole).abs().max().item()
    order = lambda v: torch.argsort(v[1:] @ v[0], descending=True).tolist()  # noqa: E731
    assert order(got) == order(ref)


def test_auto_is_float32_even_where_bf16_is_native(bert_ce_dir, monkeypatch):
    """auto keeps the exact path (batch-invariant scores); bf16 only when asked for."""
    module = load_model(bert_ce_dir).module
    for native in (False, True):
        monkeypatch.setattr(cpu_bf16, "bf16_native", lambda: native)
        assert choose(module, "auto") == "float32"
    assert choose(module, "bfloat16") == "bfloat16" and choose(module, "float32") == "float32"


def test_runner_reports_what_auto_chose(bert_ce_dir, monkeypatch):
    monkeypatch.setattr(cpu_bf16, "choose", lambda module, dtype: "bfloat16")
    runner = TorchRunner(load_model(bert_ce_dir), CPU, threads=1, dtype="auto")
    assert runner.precision == "bfloat16"
    assert Bf16Linear in set(linear_types(runner.spec.module).values())


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_server_reports_precision_in_metrics_and_serves(bert_ce_dir, dtype):
    with app_client(model=str(bert_ce_dir), dtype=dtype) as client:
        wait_ready(client)
        r = client.post("/v1/ranking", json={"query": {"text": QUERY}, "passages": [{"text": p} for p in PASSAGES]})
        assert r.status_code == 200 and len(r.json()["rankings"]) == len(PASSAGES)
        metrics = client.get("/v1/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith("rankserve_runtime_info{"))
    assert f'precision="{dtype}"' in line and 'device="cpu"' in line and line.endswith(" 1.0")


def test_gemm_timings_are_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(
        cpu_gemm, "gemm_rates", lambda weight, kernels: calls.append(kernels) or {k: 1.0 for k in kernels}
    )
    w = torch.randn(64, 32)
    assert cpu_gemm.measured_rates(w, ("torch", "onednn")) == {"torch": 1.0, "onednn": 1.0}
    assert cpu_gemm.measured_rates(w, ("torch", "onednn")) == {"torch": 1.0, "onednn": 1.0}
    assert calls == [("torch", "onednn")]  # the second start read the file
    cpu_gemm.measured_rates(w, ("onednn", "bf16"))  # another question: timed
    cpu_gemm.measured_rates(torch.randn(32, 64), ("torch", "onednn"))  # another shape: timed
    assert len(calls) == 3 and len(json.loads(cpu_gemm.rates_cache_file().read_text())) == 3
    cpu_gemm.rates_cache_file().write_text("{not json")
    assert cpu_gemm.measured_rates(w, ("torch", "onednn")) == {"torch": 1.0, "onednn": 1.0}  # re-timed
    assert len(calls) == 4 and len(json.loads(cpu_gemm.rates_cache_file().read_text())) == 1


def test_unwritable_cache_only_costs_the_timing(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file where the folder should be
    monkeypatch.setattr(cpu_gemm, "gemm_rates", lambda weight, kernels: {k: 2.0 for k in kernels})
    assert cpu_gemm.measured_rates(torch.randn(8, 8), ("torch",)) == {"torch": 2.0}


def test_gemm_rates_times_bf16():
    rates = cpu_gemm.gemm_rates(torch.randn(64, 32), rows=16, repeats=2, kernels=("torch", "bf16"))
    assert set(rates) == {"torch", "bf16"} and all(r > 0 for r in rates.values())
