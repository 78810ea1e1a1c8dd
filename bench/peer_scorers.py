"""The CPU rerankers a user would pick instead of rankserve, each as ``score(pairs) -> logits``.

Runs inside whichever venv holds the peer (their pins clash: bench/cpu_peers.py says which venv
runs which), so it imports nothing from rankserve. Every peer loads the same local model folder
(an HF BERT cross-encoder with ``model.safetensors``); those that need ONNX export it once into a
copy of that folder (``work``), never into the original. Raw logits (no sigmoid) everywhere, so
they compare with rankserve's.

Offline: ``python peer_scorers.py PEER MODEL_DIR WORK WORKLOAD.json ROUNDS`` prints one JSON line
``{"seconds": best, "scores": [...], "version": ...}``; WORKLOAD.json is ``[[query, [passage,
...]], ...]`` and every pair goes to the peer in one call (its own batching, as its docs show).
Served: bench/naive_server.py with ``PEER=...`` puts one behind FastAPI.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

Scorer = Callable[[list[tuple[str, str]]], list[float]]
BATCH = 32  # sentence-transformers' and fastembed's default batch size


def query_groups(pairs: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Consecutive pairs of one query as (query, passages), in order: for peers that take one query
    per call (the workload lists each request's pairs together)."""
    groups: list[tuple[str, list[str]]] = []
    for query, passage in pairs:
        if groups and groups[-1][0] == query:
            groups[-1][1].append(passage)
        else:
            groups.append((query, [passage]))
    return groups


def copy_model(model_dir: Path, work: Path, name: str) -> Path:
    """A private copy of the model folder for a peer that writes exports into it."""
    target = work / name
    if not target.exists():
        shutil.copytree(model_dir, target)
    return target


def onnx_export(model_dir: Path, work: Path) -> Path:
    """``model.onnx`` (fp32, optimum's export) in a copy of the folder, for ONNX-only peers. Their
    venvs hold no torch or optimum, so bench/cpu_peers.py makes it first with the
    sentence-transformers venv (``python peer_scorers.py export MODEL_DIR WORK``)."""
    target = work / "onnx"
    if not (target / "model.onnx").exists():
        try:
            from optimum.onnxruntime import ORTModelForSequenceClassification
        except ImportError as exc:
            raise RuntimeError(f"no ONNX export in {target} and no optimum here to make one") from exc
        tmp = copy_model(model_dir, work, "onnx-tmp")
        ORTModelForSequenceClassification.from_pretrained(str(tmp), export=True).save_pretrained(str(target))
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            if (model_dir / name).exists() and not (target / name).exists():
                shutil.copy(model_dir / name, target / name)
        shutil.rmtree(tmp)
    return target


def st_cross_encoder(model_dir: Path, work: Path, backend: str, variant: str = "") -> Scorer:
    """sentence-transformers ``CrossEncoder`` with ``backend`` torch / onnx / openvino; ``variant``
    "O3" (its optimized ONNX graph) or "int8" (its dynamic int8 export for AVX-512 VNNI / AVX2)."""
    import torch
    from sentence_transformers import CrossEncoder

    kwargs: dict = {}
    path = model_dir
    if backend != "torch":
        path = copy_model(model_dir, work, f"st-{backend}")
    if variant:
        from sentence_transformers import export_dynamic_quantized_onnx_model, export_optimized_onnx_model

        model = CrossEncoder(str(path), device="cpu", backend="onnx")
        if variant == "O3":
            export_optimized_onnx_model(model, "O3", str(path))
            kwargs = {"file_name": "onnx/model_O3.onnx"}
        else:
            config = "avx512_vnni" if "avx512_vnni" in open("/proc/cpuinfo").read() else "avx2"
            export_dynamic_quantized_onnx_model(model, config, str(path))
            # the weights' type is in the name: qint8 for avx512_vnni, quint8 for avx2 (optimum's
            # AutoQuantizationConfig); loading a name that is not there re-exports and fails
            (written,) = sorted((path / "onnx").glob(f"model_*int8_{config}.onnx"))
            kwargs = {"file_name": f"onnx/{written.name}"}
    model = CrossEncoder(str(path), device="cpu", backend=backend, model_kwargs=kwargs)
    identity = torch.nn.Identity()

    def score(pairs: list[tuple[str, str]]) -> list[float]:
        out = model.predict(pairs, batch_size=BATCH, activation_fn=identity, show_progress_bar=False)
        return [float(x) for x in out]

    return score


def fastembed_cross_encoder(model_dir: Path, work: Path) -> Scorer:
    """fastembed's ``TextCrossEncoder`` (onnxruntime) on our ONNX export, registered as a custom model."""
    from fastembed.rerank.cross_encoder import TextCrossEncoder

    path = onnx_export(model_dir, work)
    name = "local/rankserve-bench-ce"
    try:
        TextCrossEncoder.add_custom_model(model=name, sources=_fastembed_sources(), model_file="model.onnx")
    except ValueError:  # registered already in this process
        pass
    model = TextCrossEncoder(model_name=name, specific_model_path=str(path))

    def score(pairs: list[tuple[str, str]]) -> list[float]:
        return [float(x) for x in model.rerank_pairs(pairs, batch_size=BATCH)]

    return score


def _fastembed_sources():
    from fastembed.common.model_description import ModelSource

    return ModelSource(hf="local/rankserve-bench-ce")


def flashrank_ranker(model_dir: Path, work: Path) -> Scorer:
    """FlashRank's ``Ranker`` on our ONNX export laid out as its cache expects (one folder per model
    name holding ``flashrank.onnx`` or the file its model map names plus the tokenizer files)."""
    import numpy as np
    from flashrank import Ranker, RerankRequest
    from flashrank.Config import model_file_map

    cache = work / "flashrank"
    name = "ms-marco-TinyBERT-L-2-v2"  # a name its map knows (its fp32 file); the files in it are ours
    target = cache / name
    if not target.exists():
        shutil.copytree(onnx_export(model_dir, work), target)
        shutil.copy(target / "model.onnx", target / model_file_map[name])
    ranker = Ranker(model_name=name, cache_dir=str(cache), max_length=512, log_level="WARNING")

    def score(pairs: list[tuple[str, str]]) -> list[float]:
        out: list[float] = []
        for query, texts in query_groups(pairs):  # FlashRank takes one query per call
            passages = [{"id": k, "text": t} for k, t in enumerate(texts)]
            results = ranker.rerank(RerankRequest(query=query, passages=passages))
            # it returns sigmoid(logit); invert it so its numbers compare with the others' logits
            by_id = {r["id"]: float(np.log(r["score"]) - np.log1p(-r["score"])) for r in results}
            out.extend(by_id[k] for k in range(len(texts)))
        return out

    return score


def infinity_optimum(model_dir: Path, work: Path) -> Scorer:
    """Infinity's ``optimum`` engine (ONNX Runtime) on the optimum export, one ``rerank`` per query,
    all of a call's queries submitted at once (Infinity batches across them), on an event loop of
    its own so the scorer stays a plain function. Infinity 0.0.78 with optimum 2 (the optimum that
    installs beside torch 2.13): a local folder must be given as "." from inside it (it passes the
    ONNX file's path, folder included, as a file name optimum 2 refuses), and its graph optimizer
    fails (it passes a keyword optimum 2 removed), so it runs the unoptimized export, as it logs."""
    import asyncio
    import threading

    from infinity_emb import AsyncEngineArray, EngineArgs

    os.chdir(onnx_export(model_dir, work))
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    engine = AsyncEngineArray.from_args(
        [EngineArgs(model_name_or_path=".", engine="optimum", device="cpu", model_warmup=False)]
    )[0]
    asyncio.run_coroutine_threadsafe(engine.astart(), loop).result()

    def score(pairs: list[tuple[str, str]]) -> list[float]:
        async def rerank_all():
            groups = query_groups(pairs)
            return await asyncio.gather(*(engine.rerank(query=q, docs=ps, raw_scores=True) for q, ps in groups))

        results = asyncio.run_coroutine_threadsafe(rerank_all(), loop).result()
        # each result comes sorted by score: put it back in passage order
        return [float(x.relevance_score) for r in results for x in sorted(r[0], key=lambda x: x.index)]

    return score


PEERS: dict[str, tuple[str, Callable[[Path, Path], Scorer]]] = {
    # name: (package whose version is reported, factory)
    "st-torch": ("sentence-transformers", lambda m, w: st_cross_encoder(m, w, "torch")),
    "st-onnx": ("sentence-transformers", lambda m, w: st_cross_encoder(m, w, "onnx")),
    "st-onnx-O3": ("sentence-transformers", lambda m, w: st_cross_encoder(m, w, "onnx", "O3")),
    "st-onnx-int8": ("sentence-transformers", lambda m, w: st_cross_encoder(m, w, "onnx", "int8")),
    "st-openvino": ("sentence-transformers", lambda m, w: st_cross_encoder(m, w, "openvino")),
    "fastembed": ("fastembed", fastembed_cross_encoder),
    "flashrank": ("flashrank", flashrank_ranker),
    "infinity-optimum": ("infinity-emb", infinity_optimum),
}


def make_scorer(peer: str, model_dir: Path, work: Path) -> Scorer:
    work.mkdir(parents=True, exist_ok=True)
    return PEERS[peer][1](model_dir, work)


def main(peer: str, model_dir: str, work: str, workload_file: str, rounds: int) -> None:
    if peer == "export":
        print(onnx_export(Path(model_dir), Path(work)))
        return
    pairs = [(q, p) for q, ps in json.loads(Path(workload_file).read_text()) for p in ps]
    score = make_scorer(peer, Path(model_dir), Path(work))
    score(pairs[:BATCH])  # warm-up
    best, scores = float("inf"), []
    for _ in range(rounds):
        t = time.perf_counter()
        scores = score(pairs)
        best = min(best, time.perf_counter() - t)
    print(json.dumps({"seconds": best, "scores": scores, "version": version(PEERS[peer][0])}), flush=True)
    # Exit now: Infinity's batch threads outlive interpreter shutdown (its thread pool is shut
    # first, and they retry forever), which would keep this process, and the bench, waiting.
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1] == "export":
        main("export", sys.argv[2], sys.argv[3], "", 0)
    else:
        main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
