"""The onnxruntime backend: fp32 equals TorchRunner, int8 stays close and ranks alike, and it serves.

Tiny random checkpoints; every export goes to one temp cache shared by the session (conftest's
``export_cache``; the app tests point XDG_CACHE_HOME at it, so the server start reuses the exported files).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from conftest import app_client, wait_ready  # noqa: E402
from export_cases import (  # noqa: E402
    QUERY,
    WORDS,
    assert_ranks_alike,
    encode,
    max_diff,
    min_cosine,
    passages,
    served_embeddings_vs_torch,
)

from rankserve.config import load_config  # noqa: E402
from rankserve.engine.backends import make_runner  # noqa: E402
from rankserve.engine.backends.cpu_gemm import onednn_available  # noqa: E402
from rankserve.engine.backends.onnx_runner import OnnxRunner, exported_model  # noqa: E402
from rankserve.engine.backends.torch_runner import TorchRunner  # noqa: E402
from rankserve.errors import ConfigError  # noqa: E402
from rankserve.models.loader import load_model  # noqa: E402

FP32_TOL = 1e-4  # |onnxruntime fp32 - torch fp32|, logits and normalized vectors
INT8_REL = 0.15  # |int8 - fp32| <= INT8_REL x the fp32 score range of the batch
INT8_TAU = 0.8  # Kendall tau of int8 vs fp32 scores over one query's passages


@pytest.fixture(scope="module")
def cache(export_cache):
    return export_cache


@pytest.fixture(scope="module")
def models(bert_ce_dir, xlmr_ce_dir, bert_bi_dir):
    return {"bert-ce": load_model(bert_ce_dir), "xlmr-ce": load_model(xlmr_ce_dir), "bert-bi": load_model(bert_bi_dir)}


@pytest.mark.parametrize("gemm", ["torch", "onednn"])
@pytest.mark.parametrize("name", ["bert-ce", "xlmr-ce", "bert-bi"])
def test_fp32_equals_torch(models, cache, name, gemm, tmp_path):
    """Also: exporting a module whose linear layers were swapped to oneDNN (engine/backends/cpu_gemm.py)."""
    if gemm == "onednn" and not onednn_available():
        pytest.skip("this torch build has no oneDNN linear kernel")
    spec = models[name]
    texts = passages(12)
    encoded = encode(spec, texts)
    assert len({len(e) for e in encoded}) > 3  # a padded, mixed-length batch
    torch_runner = TorchRunner(spec, torch.device("cpu"), threads=1, cpu_gemm=gemm, dtype="float32")
    assert torch_runner.gemm == gemm
    # The oneDNN case exports afresh (a cached file would hide a failed export of the swapped module).
    onnx_runner = OnnxRunner(spec, threads=1, cache_dir=cache[1] if gemm == "torch" else tmp_path)
    expected, got = torch_runner.forward(encoded), onnx_runner.forward(encoded)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert max_diff(got, expected) <= FP32_TOL
    # Batch shapes other than the export sample's: one item, and a batch with no padding at all.
    assert max_diff(onnx_runner.forward(encoded[:1]), expected[:1]) <= FP32_TOL
    same = [e for e in encoded if len(e) == len(encoded[0])] * 3
    assert max_diff(onnx_runner.forward(same), torch_runner.forward(same)) <= FP32_TOL


@pytest.mark.parametrize("shape", ["v2", "v3"])
def test_deberta_fp32_equals_torch(tmp_path, cache, shape):
    """DeBERTa under ONNX scores as under torch: v2's token type embeddings (type_vocab_size 2) get
    the pair's type ids in both backends (one ``ModelSpec.token_types``, set by the builder), v3
    (type_vocab_size 0) gets none in either; relative attention exports with its position buckets."""
    from checkpoints import make_deberta

    directory, _ = make_deberta(tmp_path / f"deberta-{shape}", "ce", shape)
    spec = load_model(directory)
    assert spec.token_types == (shape == "v2")
    encoded = encode(spec, passages(12, seed=2))
    assert all((e.type_ids is not None) == spec.token_types for e in encoded)
    if spec.token_types:
        assert any(1 in e.type_ids for e in encoded)  # the passage half is typed 1: a wrong feed would show
    expected = TorchRunner(spec, torch.device("cpu"), threads=1, dtype="float32").forward(encoded)
    got = OnnxRunner(spec, threads=1, cache_dir=cache[1]).forward(encoded)
    assert max_diff(got, expected) <= FP32_TOL


def test_fp32_mean_pooling_repeats_exactly_multithreaded(cache):
    """The real default embedder as served (2 intra-op threads): the same padded batch of long
    passages, run again, equals torch every time. Regression: mean pooling exported as a
    scatter-add ran non-deterministically in onnxruntime (1e-2 off on the 2nd-4th run)."""
    from rankserve.models.model_dir import default_model_dir

    spec = load_model(default_model_dir())
    texts = [" ".join(random.Random(i).choice(WORDS) for _ in range(n)) for i, n in enumerate((120, 240, 250, 210))]
    encoded = encode(spec, texts)
    expected = TorchRunner(spec, torch.device("cpu"), threads=2, dtype="float32").forward(encoded)
    onnx_runner = OnnxRunner(spec, threads=2, cache_dir=cache[1])
    for _ in range(4):
        assert max_diff(onnx_runner.forward(encoded), expected) <= FP32_TOL


@pytest.mark.parametrize("name", ["bert-ce", "xlmr-ce", "bert-bi"])
def test_int8_close_and_ranks_alike(models, cache, name):
    spec = models[name]
    texts = passages(24, seed=1)
    encoded = encode(spec, texts)
    fp32 = TorchRunner(spec, torch.device("cpu"), threads=1, dtype="float32").forward(encoded)
    int8 = OnnxRunner(spec, threads=1, quantize="int8", cache_dir=cache[1]).forward(encoded)
    assert_ranks_alike(spec.kind, fp32, int8, INT8_REL, INT8_TAU)


def test_int8_is_quantized_and_cached(models, cache):
    import onnx

    spec = models["bert-ce"]
    path = exported_model(spec, "int8", cache[1])
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops and "Gemm" not in ops
    mtime = path.stat().st_mtime_ns
    assert exported_model(spec, "int8", cache[1]) == path and path.stat().st_mtime_ns == mtime  # no re-export
    assert exported_model(spec, "none", cache[1]) != path


def test_make_runner_picks_backend(models, cache, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache[0]))
    spec = models["bert-ce"]
    cpu = "cpu"
    assert isinstance(make_runner(spec, cpu, load_config({"threads": 1, "dtype": "float32"}, environ={})), TorchRunner)
    runner = make_runner(
        spec, cpu, load_config({"backend": "onnxruntime", "quantize": "int8", "threads": 1}, environ={})
    )
    assert isinstance(runner, OnnxRunner) and runner.quantize == "int8" and runner.path.is_relative_to(cache[1])


@pytest.mark.parametrize(
    "overrides,word",
    [
        ({"quantize": "int4"}, "quantize"),
        ({"quantize": "int8"}, "quantize"),  # int8 needs backend onnxruntime
        ({"backend": "onnxruntime", "dtype": "bfloat16"}, "backend"),
        ({"backend": "onnxruntime", "device": "cuda"}, "backend"),
    ],
)
def test_invalid_backend_settings(overrides, word):
    with pytest.raises(ConfigError, match=word):
        load_config(overrides, environ={})


def test_serves_rankings_with_onnxruntime(bert_ce_dir, ce_client, cache, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache[0]))
    texts = passages(6, seed=2)
    body = {"query": {"text": QUERY}, "passages": [{"text": p} for p in texts]}
    expected = ce_client.post("/v1/ranking", json={**body, "model": "tiny-ce"}).json()["rankings"]
    with app_client(model=str(bert_ce_dir), backend="onnxruntime") as client:
        wait_ready(client)
        r = client.post("/v1/ranking", json=body)
    assert r.status_code == 200, r.text
    got = r.json()["rankings"]
    assert [x["index"] for x in got] == [x["index"] for x in expected]
    assert [x["logit"] for x in got] == pytest.approx([x["logit"] for x in expected], abs=FP32_TOL)


def test_serves_embeddings_with_onnxruntime_int8(bert_bi_dir, cache, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache[0]))
    fp32, int8 = served_embeddings_vs_torch(bert_bi_dir, passages(5, seed=3), backend="onnxruntime", quantize="int8")
    assert fp32.shape == int8.shape == (5, 32)
    assert min_cosine(fp32, int8) >= 0.99


def test_llama_reranker_fp32_equals_torch(tmp_path, cache):
    """The bidirectional Llama family (GQA, RoPE, templated single-sequence input) exports as well."""
    from llama_checkpoints import make_nvidia_reranker

    spec = load_model(make_nvidia_reranker(tmp_path / "llama-rr"))
    encoded = encode(spec, passages(8, seed=4))
    expected = TorchRunner(spec, torch.device("cpu"), threads=1, dtype="float32").forward(encoded)
    got = OnnxRunner(spec, threads=1, cache_dir=cache[1]).forward(encoded)
    assert max_diff(got, expected) <= FP32_TOL
