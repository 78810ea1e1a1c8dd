"""The ONNX backends' torch-free start: the numpy graph inputs equal torch's packed batch, the spec
saved beside an export reads back equal, the cache key follows what the export depends on, and a
server process with the export cached loads, ranks and embeds without ever importing torch."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from export_cases import QUERY, passages  # noqa: E402

from rankserve.cli import main  # noqa: E402
from rankserve.config import load_config  # noqa: E402
from rankserve.engine.backends.onnx_graph import INPUTS, graph_inputs  # noqa: E402
from rankserve.engine.backends.onnx_runner import cache_key, cached_spec, exported_model  # noqa: E402
from rankserve.engine.engine import Engine  # noqa: E402
from rankserve.engine.tokenize import Encoded  # noqa: E402
from rankserve.metrics import Metrics  # noqa: E402
from rankserve.models.batch import Batch  # noqa: E402
from rankserve.models.loader import load_model  # noqa: E402
from rankserve.models.recipes import RecipeChoice  # noqa: E402
from rankserve.models.spec import from_json, to_json, with_flags  # noqa: E402


@pytest.mark.parametrize("with_types", [True, False])
@pytest.mark.parametrize("lengths", [(7, 1, 12, 12, 3), (4, 4, 4), (9,)])
def test_graph_inputs_equal_the_packed_batch(with_types, lengths):
    rng = random.Random(sum(lengths))
    items = [
        Encoded([rng.randrange(5, 90) for _ in range(n)], [rng.randrange(2) for _ in range(n)] if with_types else None)
        for n in lengths
    ]
    got = graph_inputs(items)
    p = Batch.from_sequences([it.ids for it in items], [it.type_ids for it in items] if with_types else None).packed()
    expected = dict(
        input_ids=p.input_ids,
        token_type_ids=p.token_type_ids if with_types else torch.zeros_like(p.input_ids),
        position_ids=p.position_ids,
        indices=p.indices,
        cu_seqlens=p.cu_seqlens,
        lengths=p.lengths,
        key_mask=p.key_mask,
    )
    assert list(got) == list(INPUTS)
    for name in INPUTS:
        want = expected[name].numpy()
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        assert np.array_equal(got[name], want), name


def test_graph_inputs_refuse_an_empty_batch():
    with pytest.raises(ValueError):
        graph_inputs([])
    with pytest.raises(ValueError):
        graph_inputs([Encoded([5, 6], None), Encoded([], None)])


@pytest.mark.parametrize("name", ["bert_ce_dir", "bert_bi_dir"])
def test_spec_json_round_trip(request, name):
    spec = load_model(request.getfixturevalue(name))
    back = from_json(to_json(spec))
    assert back.module is None and back.parameters > 0
    assert back == dataclasses.replace(spec, module=None)
    flagged = with_flags(back, 64, {"query_prefix": "q: "})
    assert (flagged.max_length, flagged.query_prefix, flagged.passage_prefix) == (64, "q: ", spec.passage_prefix)


def test_cache_key_follows_the_export_inputs(bert_ce_dir, tmp_path):
    folder = shutil.copytree(bert_ce_dir, tmp_path / "model")
    key = cache_key(folder, "none")
    assert cache_key(folder, "none") == key  # stable
    assert cache_key(folder, "int8") != key
    assert cache_key(folder, "none", RecipeChoice(score_tokens="yes,no")) != key  # a yes/no head's weights differ
    (folder / "sub").mkdir()
    (folder / "sub" / "config.json").write_text("{}")  # e.g. sentence-transformers' 1_Pooling/config.json
    assert cache_key(folder, "none") != key


def test_cached_spec_appears_with_the_export(bert_ce_dir, tmp_path):
    assert cached_spec(bert_ce_dir, cache_dir=tmp_path) is None
    spec = load_model(bert_ce_dir)
    path = exported_model(spec, cache_dir=tmp_path)
    assert path.is_file() and (path.parent / "spec.json").is_file()
    assert cached_spec(bert_ce_dir, cache_dir=tmp_path) == dataclasses.replace(spec, module=None)
    assert cached_spec(bert_ce_dir, "int8", cache_dir=tmp_path) is None  # another quantization: its own export


SERVE_SCRIPT = textwrap.dedent("""
    import asyncio, json, sys
    from rankserve.config import load_config
    from rankserve.engine.engine import Engine
    from rankserve.metrics import Metrics

    config = load_config(json.loads(sys.argv[1]), environ={})
    engine = Engine.load(config, Metrics())

    async def main():
        await engine.start()
        try:
            if engine.spec.kind == "cross-encoder":
                out = (await engine.rank(sys.argv[2], json.loads(sys.argv[3]))).scores
            else:
                out = (await engine.embed(json.loads(sys.argv[3]), None)).vectors.tolist()
        finally:
            await engine.stop()
        return out

    out = asyncio.run(main())
    print(json.dumps({"torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
                      "max_length": engine.spec.max_length, "out": out}))
""")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("model", ["bert_ce_dir", "bert_bi_dir"])
def test_cached_export_serves_without_torch(request, backend, model, export_cache):
    """First start (in this process) exports; a fresh process then loads from the cache, never
    imports torch, applies the operator's flags over the cached spec, and gives the same answers."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    directory = request.getfixturevalue(model)
    texts = passages(5, seed=7)
    settings = {
        "model": str(directory),
        "backend": backend,
        "dtype": "float32",
        "threads": 1,
        "warmup": False,
        "cache_size": 0,
        "max_length": 48,
    }
    env = {**os.environ, "XDG_CACHE_HOME": str(export_cache[0])}
    spec = load_model(directory)
    exported_model(spec, cache_dir=export_cache[1])  # what a first start does (or already cached)
    run = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, json.dumps(settings), QUERY, json.dumps(texts)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    served = json.loads(run.stdout.strip().splitlines()[-1])
    assert served["torch"] == []
    assert served["max_length"] == 48 != spec.max_length  # the flag, over the cached spec's own value
    assert (
        json.loads((exported_model(spec, cache_dir=export_cache[1]).parent / "spec.json").read_text())["max_length"]
        == spec.max_length
    )  # the saved spec stays the model's
    # The same answers as the torch engine with the same flags.
    engine = Engine.load(load_config({**settings, "backend": "torch"}, environ={}), Metrics())

    async def reference():
        await engine.start()
        try:
            if engine.spec.kind == "cross-encoder":
                return (await engine.rank(QUERY, texts)).scores
            return (await engine.embed(texts, None)).vectors.tolist()
        finally:
            await engine.stop()

    expected = asyncio.run(reference())
    assert np.abs(np.array(served["out"]) - np.array(expected)).max() <= 1e-4


def test_export_command_fills_the_cache_serve_reads(bert_ce_dir, bert_bi_dir, tmp_path, monkeypatch, capsys):
    """`rankserve export` writes each model's export (NAME=DIR entries too) where `serve` looks."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cached_spec(bert_ce_dir) is None
    models = f"ce={bert_ce_dir},bi={bert_bi_dir}"
    assert main(["export", "--backend", "onnxruntime", "--model", models, "--threads", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["model"] for x in lines] == ["ce", "bi"] and all(x["backend"] == "onnxruntime" for x in lines)
    for directory, line in zip((bert_ce_dir, bert_bi_dir), lines):
        assert cached_spec(directory) == dataclasses.replace(load_model(directory), module=None)
        assert line["export"].startswith(str(tmp_path))
    assert main(["export", "--model", str(bert_ce_dir)]) == 2  # the torch backend has nothing to export
    assert "export is for --backend" in capsys.readouterr().err
