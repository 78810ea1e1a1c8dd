"""Model by name: the real ``huggingface_hub`` client against a Hub of our own on 127.0.0.1
(tests/hub_server.py, reached through ``HF_ENDPOINT``), fetching tiny checkpoints into a temp HF cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from checkpoints import make_bert_cross_encoder
from conftest import app_client, free_port, wait_process_ready, wait_ready
from hub_server import FakeHub

from rankserve.config import load_config
from rankserve.errors import ConfigError, ModelLoadError
from rankserve.model_source import HUB_ENV, is_hub_ref, resolve, served_id, split_ref, wanted

PAIRS = {
    "query": {"text": "how do I list files"},
    "passages": [
        {"text": "ls lists the files of a directory"},
        {"text": "paris is the capital of france"},
        {"text": "bananas are rich in potassium"},
    ],
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Two tiny cross-encoders (different weights), one with pickle and ONNX files beside its
    safetensors, and one repo with pickle weights only."""
    root = tmp_path_factory.mktemp("hub-folders")
    a = make_bert_cross_encoder(root / "a", seed=0)
    (a / "pytorch_model.bin").write_bytes(b"\x80\x04 not to be fetched")
    (a / "onnx").mkdir()
    (a / "onnx" / "model.onnx").write_bytes(b"not to be fetched either")
    b = make_bert_cross_encoder(root / "b", seed=1)
    pickled = root / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(a / name, pickled / name)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04" + b"x" * 1000)
    return {"a": a, "b": b, "pickled": pickled}


@pytest.fixture
def hub(folders, tmp_path, monkeypatch):
    """A fresh Hub and an empty HF cache; ``org/tiny`` is ``a`` (main) and ``org/two`` has ``a``
    (tag v1) and ``b`` (main)."""
    for name in HUB_ENV:
        monkeypatch.delenv(name, raising=False)
    with FakeHub() as server:
        server.shas = {
            "tiny": server.add("org/tiny", {"a": folders["a"]}),
            "two": server.add("org/two", {"a": folders["a"], "b": folders["b"]}, refs={"v1": "a"}),
        }
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        yield server


def scores(client, model: str | None = None) -> list[float]:
    r = client.post("/v1/ranking", json={**PAIRS, **({"model": model} if model else {})})
    assert r.status_code == 200, r.text
    return [x["logit"] for x in sorted(r.json()["rankings"], key=lambda x: x["index"])]


def test_reference_syntax():
    assert split_ref("org/name@v1.2") == ("org/name", "v1.2") and split_ref("org/name") == ("org/name", None)
    assert is_hub_ref("BAAI/bge-reranker-v2-m3") and is_hub_ref("org/name@refs/pr/3")
    assert not is_hub_ref("/abs/path") and not is_hub_ref("a/b/c") and not is_hub_ref("org/name@")
    assert served_id("BAAI/bge-reranker-v2-m3@main") == "BAAI/bge-reranker-v2-m3"
    with pytest.raises(ConfigError, match="nor a Hugging Face repo id"):
        load_config({"model": "no/such/folder"}, environ={})
    load_config({"model": "org/name@v1"}, environ={})  # syntax only: nothing is fetched at config time


def test_only_what_is_loaded_is_wanted():
    files = [
        "config.json",
        "tokenizer.json",
        "vocab.txt",
        "model.safetensors",
        "pytorch_model.bin",
        "tf_model.h5",
        "flax_model.msgpack",
        "onnx/model.onnx",
        "onnx/config.json",
        "1_Pooling/config.json",
        "README.md",
        "consolidated.safetensors",
        "openvino/openvino_model.bin",
    ]
    assert wanted(files) == ["1_Pooling/config.json", "config.json", "model.safetensors", "tokenizer.json", "vocab.txt"]
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    assert wanted(shards + ["consolidated.safetensors"]) == sorted(shards)


def test_served_by_name_equals_serving_the_folder(hub, folders):
    with app_client(model=str(folders["a"])) as local:
        wait_ready(local)
        expected = scores(local)
    with app_client(model="org/tiny") as client:
        wait_ready(client)
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["org/tiny"]
        assert scores(client, "org/tiny") == expected  # same weights, same float32 path: identical
        (info,) = client.get("/v1/metadata").json()["modelInfo"]
    assert info["modelName"] == "org/tiny" and info["kind"] == "cross-encoder"
    assert info["source"]["repo_id"] == "org/tiny" and info["source"]["commit"] == hub.shas["tiny"]["a"]
    fetched = sorted(p.rsplit("/", 1)[1] for p in hub.requested() if hub.log)
    assert set(fetched) == {"config.json", "tokenizer.json", "model.safetensors"}
    assert not hub.requested(".bin") and not hub.requested(".onnx")  # pickle and ONNX never asked for


def test_revisions_tag_branch_commit_and_flag(hub):
    a, b = hub.shas["two"]["a"], hub.shas["two"]["b"]
    assert resolve("org/two").commit == b
    assert resolve("org/two@v1").commit == a and resolve("org/two", "v1").commit == a
    assert resolve(f"org/two@{a}").commit == a
    assert resolve("org/two@main", "v1").commit == b  # the reference's own @rev wins over --revision
    with app_client(model="org/two@v1") as old, app_client(model="org/two") as new:
        wait_ready(old)
        wait_ready(new)
        assert scores(old) != scores(new)  # two commits, two sets of weights
        assert old.get("/v1/metadata").json()["modelInfo"][0]["source"]["revision"] == "v1"


def test_gated_repo_needs_the_token_and_it_is_sent(hub, folders, monkeypatch):
    hub.add("nvidia/gated", {"a": folders["a"]}, token="hf_secret")
    with pytest.raises(ModelLoadError, match=r"'nvidia/gated' is a gated repo.*HF_TOKEN"):
        resolve("nvidia/gated")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    hub.log.clear()
    assert resolve("nvidia/gated").path.joinpath("model.safetensors").is_file()
    assert hub.log and {r.authorization for r in hub.log} == {"Bearer hf_secret"}


def test_pickle_only_repo_is_refused_before_any_download(hub, folders):
    hub.add("old/pickled", {"p": folders["pickled"]})
    with pytest.raises(ModelLoadError, match=r"'old/pickled'.*only pickle weights \(pytorch_model.bin\).*safetensors"):
        resolve("old/pickled")
    assert hub.requested() == []  # not even config.json was fetched


def test_errors_name_the_repo(hub, monkeypatch):
    with pytest.raises(ModelLoadError, match=r"repo 'org/missing' not found on http://127\.0\.0\.1.*HF_TOKEN"):
        resolve("org/missing")
    with pytest.raises(ModelLoadError, match=r"revision 'v9' not found in 'org/two'"):
        resolve("org/two@v9")
    hub.repos["org/tiny"].sizes["model.safetensors"] = 1 << 60  # the listing says it is far bigger than any disk
    with pytest.raises(ModelLoadError, match=r"'org/tiny' needs .* MiB more .* MiB free"):
        resolve("org/tiny")
    assert not hub.requested()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelLoadError, match=r"'org/two'@main: HF_HUB_OFFLINE is set.*does not hold it.*rankserve download"
    ):
        resolve("org/two")


def test_offline_restart_from_the_cache(hub, monkeypatch):
    first = resolve("org/two@v1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.log.clear()
    again = resolve("org/two@v1")
    assert again == first and hub.log == []  # no request at all
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.__exit__()  # the Hub goes away: an online start falls back to the cache
    assert resolve("org/two@v1").commit == first.commit
    with pytest.raises(ModelLoadError, match=r"'org/tiny'@main: http://127.*cannot be reached.*does not hold it"):
        resolve("org/tiny")


def test_an_interrupted_download_is_never_served_and_completes_later(hub, monkeypatch, folders):
    hub.cuts["model.safetensors"] = 100  # every try is cut half-way: the client gives up
    with pytest.raises(ModelLoadError, match=r"'org/tiny': the download .* failed.*start again"):
        resolve("org/tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"holds only part of it \(an interrupted download\)"):
        resolve("org/tiny")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.cuts.clear()
    done = resolve("org/tiny")
    assert (done.path / "model.safetensors").read_bytes() == (folders["a"] / "model.safetensors").read_bytes()


def test_a_local_folder_wins_over_a_repo_id(hub, folders, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(folders["b"], tmp_path / "org" / "tiny")
    source = resolve("org/tiny")
    assert source.path == Path("org/tiny") and source.repo_id is None and hub.log == []


def test_nim_cache_path_is_the_cache_when_hf_sets_none(hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("NIM_CACHE_PATH", str(tmp_path / "nim"))
    assert resolve("org/tiny").path.is_relative_to(tmp_path / "nim" / "huggingface" / "hub")


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rankserve.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_download_then_offline_serve(hub, folders, tmp_path):
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hf-cache")}
    done = cli("download", "org/two", "rr=org/two@v1", env=env)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(x["model"], x["commit"]) for x in lines] == [
        ("org/two", hub.shas["two"]["b"]),
        ("rr=org/two@v1", hub.shas["two"]["a"]),
    ]
    assert "Fetching" in done.stderr  # the hub client's own progress bar
    missing = cli("download", "org/missing", env=env)
    assert missing.returncode == 2 and "repo 'org/missing' not found" in missing.stderr
    # the cache filled above serves with no network (HF_HUB_OFFLINE) and no Hub (endpoint closed)
    hub.__exit__()
    port = free_port()
    serve_env = {
        **env,
        "HF_HUB_OFFLINE": "1",
        "RANKSERVE_HOST": "127.0.0.1",
        "RANKSERVE_PORT": str(port),
        "RANKSERVE_DTYPE": "float32",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "rankserve.cli", "serve", "--model", "org/two", "--revision", "v1"],
        env={**os.environ, **serve_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_process_ready(proc, url)
        meta = httpx.get(url + "/v1/metadata").json()["modelInfo"][0]
        assert meta["modelName"] == "org/two" and meta["source"]["commit"] == hub.shas["two"]["a"]
        assert httpx.post(url + "/v1/ranking", json=PAIRS, timeout=30).status_code == 200
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"commit {hub.shas['two']['a']}" in out  # the resolved commit in the log


def test_cli_serve_exits_nonzero_naming_the_repo(hub, tmp_path):
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
        "RANKSERVE_HOST": "127.0.0.1",
        "RANKSERVE_PORT": str(free_port()),
    }
    done = cli("serve", "--model", "org/two@nope", env=env)
    assert done.returncode == 1 and "revision 'nope' not found in 'org/two'" in done.stderr
