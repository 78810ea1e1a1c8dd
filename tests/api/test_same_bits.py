"""Same pair, same bits, whatever the path and the load (the default ``--dtype auto``).

A live server on 127.0.0.1 serves a tiny cross-encoder over HTTP and gRPC. Each passage is first
scored alone (one request per passage, nothing else in flight); then the same pairs are scored
inside larger requests, while other clients send requests of other sizes, over the NIM route,
gRPC (the real ``tritonclient``), TEI's ``/rerank`` (raw scores), Cohere's ``/v1/rerank`` (the
sigmoid of the logit) and with truncate CHUNK (a long passage's windows batched with others').
Every logit must equal the alone one exactly, not within a tolerance.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from conftest import LiveServer, free_port, require

from rankserve.api.compat import sigmoid

try:
    import tritonclient.grpc as tg
except ImportError:  # pragma: no cover - the [dev] extra installs it
    tg = None

QUERY = "how do i list the files in a directory"
WORDS = (
    "ls lists directory contents sorted by name with options for long format hidden files and "
    "recursion df reports file system disk space usage du estimates file space grep prints lines "
    "matching a pattern find searches for files in a directory hierarchy"
).split()


def passages(count: int, seed: int, longest: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, longest))) for _ in range(count)]


PROBES = passages(12, seed=1)
LONG = " ".join(passages(1, seed=9, longest=40)[0] for _ in range(12))  # several windows under CHUNK


@pytest.fixture(scope="module")
def server(bert_ce_dir):
    require(tg is not None, "no tritonclient for the gRPC path", "pip install 'tritonclient[grpc]'")
    port = free_port()
    with LiveServer(model=f"ce={bert_ce_dir}", grpc_port=port, dtype="auto") as live:
        live.grpc = f"127.0.0.1:{port}"
        yield live


def nim(url: str, texts: list[str], truncate: str = "END") -> list[float]:
    r = httpx.post(
        url + "/v1/ranking",
        timeout=120,
        json={"model": "ce", "query": {"text": QUERY}, "passages": [{"text": t} for t in texts], "truncate": truncate},
    )
    assert r.status_code == 200, r.text
    logits = [0.0] * len(texts)
    for item in r.json()["rankings"]:
        logits[item["index"]] = item["logit"]
    return logits


def grpc(address: str, texts: list[str]) -> list[float]:
    client = tg.InferenceServerClient(address)

    def column(name: str, values: list[str]):
        tensor = tg.InferInput(name, [len(values), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object).reshape(-1, 1))
        return tensor

    result = client.infer("ce", [column("query", [QUERY] * len(texts)), column("passage", texts)])
    logits = [0.0] * len(texts)
    for index, logit in zip(result.as_numpy("index").ravel().tolist(), result.as_numpy("logit").ravel().tolist()):
        logits[index] = logit
    return logits


def tei(url: str, texts: list[str]) -> list[float]:
    r = httpx.post(url + "/rerank", timeout=120, json={"query": QUERY, "texts": texts, "raw_scores": True})
    assert r.status_code == 200, r.text
    return [x["score"] for x in sorted(r.json(), key=lambda x: x["index"])]


def cohere(url: str, texts: list[str]) -> list[float]:
    r = httpx.post(url + "/v1/rerank", timeout=120, json={"model": "ce", "query": QUERY, "documents": texts})
    assert r.status_code == 200, r.text
    return [x["relevance_score"] for x in sorted(r.json()["results"], key=lambda x: x["index"])]


def background_load(url: str, stop_after: int) -> list[list[float]]:
    """Other clients: requests of 1-30 passages of other texts, so batches mix with the probes."""
    return [nim(url, passages(1 + (i * 7) % 30, seed=100 + i)) for i in range(stop_after)]


def test_a_pair_scores_the_same_bits_on_every_path_and_under_load(server):
    alone = [nim(server.url, [p])[0] for p in PROBES]
    assert len(set(alone)) > 1  # the scores differ between passages: the check can fail
    rng = random.Random(5)
    mixed = PROBES + passages(20, seed=2)
    rng.shuffle(mixed)
    where = [mixed.index(p) for p in PROBES]
    with ThreadPoolExecutor(8) as pool:
        load = [pool.submit(background_load, server.url, 6) for _ in range(4)]
        paths = {
            "nim, one request": pool.submit(nim, server.url, PROBES),
            "nim, among others": pool.submit(nim, server.url, mixed),
            "grpc": pool.submit(grpc, server.grpc, PROBES),
            "grpc, among others": pool.submit(grpc, server.grpc, mixed),
            "tei raw": pool.submit(tei, server.url, mixed),
        }
        cohere_scores = pool.submit(cohere, server.url, PROBES)
        got = {name: future.result() for name, future in paths.items()}
        for future in load:
            future.result()
    for name, logits in got.items():
        values = [logits[i] for i in where] if len(logits) == len(mixed) else logits
        assert values == alone, (name, max(abs(a - b) for a, b in zip(values, alone)))
    assert cohere_scores.result() == [sigmoid(x) for x in alone]


def test_chunk_windows_score_the_same_bits_alone_and_under_load(server):
    alone = nim(server.url, [LONG], "CHUNK")[0]
    with ThreadPoolExecutor(6) as pool:
        load = [pool.submit(background_load, server.url, 4) for _ in range(3)]
        together = [pool.submit(nim, server.url, [*passages(k, seed=k), LONG], "CHUNK") for k in (3, 9, 17)]
        for future in load:
            future.result()
        assert [f.result()[-1] for f in together] == [alone] * 3
    assert alone != nim(server.url, [LONG], "END")[0]  # CHUNK really scored windows past the first cut
