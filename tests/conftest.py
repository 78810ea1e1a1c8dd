"""Shared fixtures: tiny checkpoints, in-process apps, and a live server on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))

from checkpoints import make_bert_bi_encoder, make_bert_cross_encoder, make_xlmr_cross_encoder  # noqa: E402

from rankserve.api.app import create_app  # noqa: E402
from rankserve.config import load_config  # noqa: E402


@pytest.fixture(scope="session")
def bert_ce_dir(tmp_path_factory) -> Path:
    return make_bert_cross_encoder(tmp_path_factory.mktemp("bert-ce"))


@pytest.fixture(scope="session")
def xlmr_ce_dir(tmp_path_factory) -> Path:
    return make_xlmr_cross_encoder(tmp_path_factory.mktemp("xlmr-ce"))


@pytest.fixture(scope="session")
def bert_bi_dir(tmp_path_factory) -> Path:
    return make_bert_bi_encoder(tmp_path_factory.mktemp("bert-bi"))


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory) -> tuple[Path, Path]:
    """(an XDG_CACHE_HOME, its rankserve/onnx folder): one ONNX export per tiny model per session,
    shared by the onnxruntime and openvino backends' tests."""
    root = tmp_path_factory.mktemp("xdg-cache")
    return root, root / "rankserve" / "onnx"


def require(ok: bool, why: str, install: str) -> None:
    """Gate a test on a prerequisite (system package, optional wheel): skip locally naming the install
    line, but fail when the environment variable CI is set (anything but "", "0" or "false"), so a CI
    run can never pass by silently skipping a whole area."""
    if ok:
        return
    ci = os.environ.get("CI", "").strip().lower()
    if ci not in ("", "0", "false"):
        pytest.fail(
            f"{why} (CI={os.environ['CI']!r}: prerequisites are required here; install: {install})", pytrace=False
        )
    pytest.skip(f"{why}: {install}")


def wait_ready(client: TestClient, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/v1/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise TimeoutError(client.get("/v1/health/ready").json())


# Tests that compare served numbers with a reference (transformers, sentence-transformers) at 1e-5
# need the exact float32 path; --dtype auto may pick mixed bf16 on a CPU with native bf16 (its own
# tests: tests/engine/test_cpu_bf16.py). A test that wants auto passes dtype="auto".
TEST_DTYPE = {"dtype": "float32"}


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in a /v1/metrics body whose labels include ``labels`` (engine
    series carry a ``model`` label; summing over it reads a one-model server as before)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def with_engine(directory, work, **config):
    """``await work(engine)`` on a started float32 Engine for ``directory`` (no warm-up), then stop it."""
    import asyncio

    from rankserve.engine.engine import Engine
    from rankserve.metrics import Metrics

    engine = Engine.load(
        load_config({**TEST_DTYPE, "model": str(directory), "warmup": False, **config}, environ={}), Metrics()
    )

    async def go():
        await engine.start()
        try:
            return await work(engine)
        finally:
            await engine.stop()

    return asyncio.run(go())


def app_client(**overrides) -> TestClient:
    """A TestClient (lifespan running) for an app built from config overrides; use as a context manager."""
    return TestClient(create_app(load_config({**TEST_DTYPE, **overrides}, environ={})), raise_server_exceptions=False)


@pytest.fixture(scope="session")
def default_client() -> Iterator[TestClient]:
    """The packaged default model (all-MiniLM-L6-v2), in-process."""
    with app_client() as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="session")
def ce_client(bert_ce_dir) -> Iterator[TestClient]:
    with app_client(model=str(bert_ce_dir), served_model_name="tiny-ce", max_passages=8) as client:
        wait_ready(client)
        yield client


def wait_process_ready(proc, url: str, timeout: float = 120) -> None:
    """Poll ``url``'s readiness until 200, failing with the output if the server process ``proc`` exits."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(url + "/v1/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("server never became ready")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving an app in a background thread on 127.0.0.1."""

    def __init__(self, **overrides):
        self.port = free_port()
        config = load_config({**TEST_DTYPE, **overrides, "host": "127.0.0.1", "port": self.port}, environ={})
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(config), host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        import httpx

        self.thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/v1/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("live server did not become ready")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def live_default() -> Iterator[LiveServer]:
    with LiveServer() as server:
        yield server
