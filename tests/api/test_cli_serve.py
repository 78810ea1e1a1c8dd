"""The README's first command, for real: `rankserve serve` in a subprocess, then HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
from conftest import free_port, wait_process_ready


def test_rankserve_serve_default_model_end_to_end():
    port = free_port()
    env = {**os.environ, "NIM_HTTP_API_PORT": str(port), "RANKSERVE_HOST": "127.0.0.1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rankserve.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_process_ready(proc, url)
        body = {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "query": {"text": "How do I list files in a directory?"},
            "passages": [
                {"text": "Bananas are rich in potassium."},
                {"text": "The ls command lists directory contents."},
                {"text": "Paris is the capital of France."},
            ],
        }
        r = httpx.post(url + "/v1/ranking", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["rankings"][0]["index"] == 1
        bad = httpx.post(url + "/v1/ranking", content=b"[]", headers={"content-type": "application/json"})
        assert bad.status_code == 422 and bad.json()["error"]
        assert httpx.get(url + "/v1/health/live").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
