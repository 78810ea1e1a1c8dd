"""The openvino backend: fp32 equals TorchRunner, bf16 (where the CPU has it) stays close and ranks
alike, auto picks by the CPU, the compiled model is cached, and it serves.

Tiny random checkpoints; the ONNX exports are shared with the onnxruntime tests (conftest's
``export_cache``), and XDG_CACHE_HOME points there so OpenVINO's compile cache lands in it too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from conftest import app_client, wait_ready  # noqa: E402
from export_cases import QUERY, assert_ranks_alike, encode, max_diff, min_cosine, passages, served_embeddings_vs_torch  # noqa: E402

from rankserve.config import load_config  # noqa: E402
from rankserve.engine.backends import (
    make_runner,  # noqa: E402
    openvino_runner,  # noqa: E402
)
from rankserve.engine.backends.cpu_bf16 import bf16_native  # noqa: E402
from rankserve.engine.backends.openvino_runner import OpenVinoRunner, choose_precision  # noqa: E402
from rankserve.engine.backends.torch_runner import TorchRunner  # noqa: E402
from rankserve.errors import ConfigError  # noqa: E402
from rankserve.models.loader import load_model  # noqa: E402

FP32_TOL = 1e-4  # |openvino fp32 - torch fp32|, logits and normalized vectors
BF16_REL = 0.08  # |bf16 - fp32| <= BF16_REL x the fp32 score range of the batch (measured 0.011-0.037)
BF16_TAU = 0.9  # Kendall tau of bf16 vs fp32 scores over one query's passages (measured 0.95-0.99)


@pytest.fixture(scope="module")
def cache(export_cache, monkeypatch_module):
    monkeypatch_module.setenv("XDG_CACHE_HOME", str(export_cache[0]))
    return export_cache


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def models(bert_ce_dir, xlmr_ce_dir, bert_bi_dir):
    return {"bert-ce": load_model(bert_ce_dir), "xlmr-ce": load_model(xlmr_ce_dir), "bert-bi": load_model(bert_bi_dir)}


def fp32_reference(spec, encoded) -> np.ndarray:
    return TorchRunner(spec, torch.device("cpu"), threads=1, dtype="float32").forward(encoded)


@pytest.mark.parametrize("name", ["bert-ce", "xlmr-ce", "bert-bi"])
def test_fp32_equals_torch(models, cache, name):
    spec = models[name]
    encoded = encode(spec, passages(12))
    assert len({len(e) for e in encoded}) > 3  # a padded, mixed-length batch
    runner = OpenVinoRunner(spec, threads=1, dtype="float32", cache_dir=cache[1])
    assert runner.precision == "float32"
    assert runner.model.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    expected, got = fp32_reference(spec, encoded), runner.forward(encoded)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert max_diff(got, expected) <= FP32_TOL
    # Batch shapes other than the export sample's: one item, and a batch with no padding at all.
    assert max_diff(runner.forward(encoded[:1]), expected[:1]) <= FP32_TOL
    same = [e for e in encoded if len(e) == len(encoded[0])] * 3
    assert max_diff(runner.forward(same), fp32_reference(spec, same)) <= FP32_TOL


@pytest.mark.skipif(not bf16_native(), reason="bf16 is emulated on this CPU")
@pytest.mark.parametrize("name", ["bert-ce", "xlmr-ce", "bert-bi"])
def test_bf16_close_and_ranks_alike(models, cache, name):
    spec = models[name]
    encoded = encode(spec, passages(24, seed=1))
    fp32 = fp32_reference(spec, encoded)
    runner = OpenVinoRunner(spec, threads=1, dtype="bfloat16", cache_dir=cache[1])
    assert runner.model.get_property("INFERENCE_PRECISION_HINT").to_string() == "bf16"
    bf16 = runner.forward(encoded)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    # It really computed in bf16: OpenVINO's f32 is within 1e-5 of torch, bf16 moves scores ~1e-2.
    assert max_diff(bf16, fp32) > 10 * FP32_TOL
    assert_ranks_alike(spec.kind, fp32, bf16, BF16_REL, BF16_TAU)


@pytest.mark.parametrize(
    "native,capabilities",
    [
        (True, ["BF16", "FP32", "INT8"]),
        (False, ["FP32", "INT8"]),
        (True, ["FP32", "INT8"]),
    ],
)
def test_auto_precision_is_float32_on_every_cpu(monkeypatch, native, capabilities):
    """auto is the exact path even where bf16 is native; bf16 is opt-in (docs/batch-invariance.md)."""
    monkeypatch.setattr(openvino_runner, "bf16_native", lambda: native)
    assert choose_precision("auto", capabilities) == "float32"
    assert choose_precision("float32", capabilities) == "float32"  # explicit choices are kept
    assert choose_precision("bfloat16", capabilities) == "bfloat16"


def test_compiled_model_is_cached(models, cache):
    folder = cache[0] / "rankserve" / "openvino"
    OpenVinoRunner(models["bert-ce"], threads=1, dtype="float32", cache_dir=cache[1])
    blobs = {p: p.stat().st_mtime_ns for p in folder.glob("*.blob")}
    assert blobs  # OpenVINO wrote the compiled model
    OpenVinoRunner(models["bert-ce"], threads=1, dtype="float32", cache_dir=cache[1])
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*.blob")} == blobs  # read back, not compiled anew


def test_make_runner_picks_openvino(models, cache):
    runner = make_runner(
        models["bert-ce"], "cpu", load_config({"backend": "openvino", "dtype": "float32", "threads": 1}, environ={})
    )
    assert isinstance(runner, OpenVinoRunner) and runner.precision == "float32"
    assert runner.path.is_relative_to(cache[1])


def test_missing_package_is_a_config_error(models, monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    for missing, words in (("openvino", r"rankserve\[openvino\]"), ("onnxscript", r"onnxscript.*rankserve\[onnx\]")):
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a, gone=missing: None if name == gone else real(name, *a)
        )
        with pytest.raises(ConfigError, match=words):  # onnxscript: only to export (no cached export in tmp_path)
            OpenVinoRunner(models["bert-ce"], threads=1, dtype="float32", cache_dir=tmp_path)


def test_cached_export_needs_no_exporter(models, cache, monkeypatch):
    """With the export cached, neither onnx nor onnxscript is needed (nor imported) to serve."""
    import importlib.util

    OpenVinoRunner(models["bert-ce"], threads=1, dtype="float32", cache_dir=cache[1])  # exported (or cached)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("onnx", "onnxscript") else real(name, *a)
    )
    assert OpenVinoRunner(models["bert-ce"], threads=1, dtype="float32", cache_dir=cache[1]).forward(
        encode(models["bert-ce"], passages(3))
    ).shape == (3,)


@pytest.mark.parametrize(
    "overrides",
    [
        {"backend": "openvino", "device": "cuda"},
        {"backend": "openvino", "dtype": "float16"},
        {"backend": "openvino", "quantize": "int8"},  # int8 is onnxruntime's
    ],
)
def test_invalid_openvino_settings(overrides):
    with pytest.raises(ConfigError):
        load_config(overrides, environ={})


def test_serves_rankings_with_openvino(bert_ce_dir, ce_client, cache):
    texts = passages(6, seed=2)
    body = {"query": {"text": QUERY}, "passages": [{"text": p} for p in texts]}
    expected = ce_client.post("/v1/ranking", json={**body, "model": "tiny-ce"}).json()["rankings"]
    with app_client(model=str(bert_ce_dir), backend="openvino") as client:  # conftest: dtype float32
        wait_ready(client)
        r = client.post("/v1/ranking", json=body)
        metrics = client.get("/metrics").text
    assert r.status_code == 200, r.text
    got = r.json()["rankings"]
    assert [x["index"] for x in got] == [x["index"] for x in expected]
    assert [x["logit"] for x in got] == pytest.approx([x["logit"] for x in expected], abs=FP32_TOL)
    assert 'backend="openvino"' in metrics and 'precision="float32"' in metrics


def test_serves_embeddings_with_openvino(bert_bi_dir, cache):
    fp32, got = served_embeddings_vs_torch(bert_bi_dir, passages(5, seed=3), backend="openvino", dtype="auto")
    assert fp32.shape == got.shape == (5, 32)
    assert min_cosine(fp32, got) >= 0.99999  # auto is float32 everywhere


def test_llama_reranker_fp32_equals_torch(tmp_path, cache):
    """The bidirectional Llama family (GQA, RoPE, templated single-sequence input) compiles as well."""
    from llama_checkpoints import make_nvidia_reranker

    spec = load_model(make_nvidia_reranker(tmp_path / "llama-rr"))
    encoded = encode(spec, passages(8, seed=4))
    expected = fp32_reference(spec, encoded)
    got = OpenVinoRunner(spec, threads=1, dtype="float32", cache_dir=cache[1]).forward(encoded)
    assert max_diff(got, expected) <= FP32_TOL
