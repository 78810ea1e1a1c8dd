"""`rankserve serve` as a real process: loud start-up failure, JSON logs with request ids, HTTPS."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port, require

SERVE = [sys.executable, "-m", "rankserve.cli", "serve", "--host", "127.0.0.1", "--no-warmup"]


def broken_models(root: Path, ce_dir: Path) -> dict[str, tuple[Path, str]]:
    """name -> (model folder, the fragment the one error line must contain)."""

    def copy(name: str) -> Path:
        target = root / name
        shutil.copytree(ce_dir, target)
        return target

    out = {}
    gpt2 = root / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}')
    out["unsupported architecture"] = (gpt2, "unsupported architecture ['GPT2LMHeadModel']")
    missing = copy("no-weights")
    (missing / "model.safetensors").unlink()
    out["missing weights"] = (missing, "no model.safetensors")
    pickled = copy("pickle-only")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    out["pickle only"] = (pickled, "pytorch_model.bin: pickle files are never loaded")
    corrupt = copy("corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    out["corrupt weights"] = (corrupt, "model.safetensors is not a readable safetensors file")
    absurd = copy("absurd-config")
    cfg = json.loads((absurd / "config.json").read_text())
    (absurd / "config.json").write_text(json.dumps({**cfg, "hidden_size": 10**9}))
    out["absurd config"] = (absurd, "hidden_size=1000000000 is out of range")
    oversized = copy("config-bigger-than-weights")
    (oversized / "config.json").write_text(json.dumps({**cfg, "hidden_size": 4096, "intermediate_size": 16384}))
    out["config bigger than the weights"] = (oversized, "parameters but the weight files hold only")
    return out


def test_start_up_failures_exit_1_with_one_clear_line(tmp_path, bert_ce_dir):
    for name, (folder, fragment) in broken_models(tmp_path, bert_ce_dir).items():
        proc = subprocess.run(
            [*SERVE, "--port", str(free_port()), "--model", str(folder)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 1, (name, proc.returncode, proc.stderr[-2000:])
        lines = [line for line in proc.stderr.splitlines() if "cannot serve" in line]
        assert len(lines) == 1 and fragment in lines[0], (name, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, name


def test_missing_model_folder_is_a_config_error_before_serving(tmp_path):
    proc = subprocess.run([*SERVE, "--model", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid model=" in proc.stderr and "Traceback" not in proc.stderr


def test_a_port_in_use_is_a_config_error_before_the_model_loads(bert_ce_dir):
    """Another process listens on the port: exit 2 with one line naming the port, and no model load."""
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        proc = subprocess.run(
            [*SERVE, "--port", str(port), "--model", str(bert_ce_dir), "--log-level", "info"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr and "--port" in proc.stderr
    assert "loaded " not in proc.stderr and "Traceback" not in proc.stderr


class Server:
    """`rankserve serve` in a child process; its stderr collected to a file."""

    def __init__(self, tmp_path: Path, *args: str, scheme: str = "http", verify=True):
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.log = tmp_path / f"server-{self.port}.log"
        self.verify = verify
        self.proc = subprocess.Popen(
            [*SERVE, "--port", str(self.port), *args],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/v1/health/ready", timeout=2, verify=self.verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(self.log.read_text())

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def test_json_logs_carry_the_request_id(tmp_path, bert_ce_dir):
    with Server(tmp_path, "--model", str(bert_ce_dir), "--log-format", "json") as server:
        body = {"query": {"text": "list files"}, "passages": [{"text": "ls lists files"}]}
        r = httpx.post(server.url + "/v1/ranking", json=body, headers={"X-Request-Id": "trace-42"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42"
        bad = httpx.post(server.url + "/v1/ranking", json={})
        assert bad.status_code == 422
    assert server.proc.returncode in (0, -15)  # SIGTERM re-raised after a clean drain, as uvicorn does
    entries = [json.loads(line) for line in server.log.read_text().splitlines()]  # every line is JSON
    access = [e for e in entries if e["logger"] == "rankserve.access"]
    mine = [e for e in access if e.get("request_id") == "trace-42"]
    assert len(mine) == 1 and mine[0]["status"] == 200 and mine[0]["path"] == "/v1/ranking"
    other = next(e for e in access if e["status"] == 422)
    assert other["request_id"] == bad.headers["x-request-id"]
    assert any(e["message"].startswith("drained in") for e in entries)


def test_https_with_a_certificate(tmp_path, bert_ce_dir):
    openssl = shutil.which("openssl")
    require(openssl is not None, "HTTPS test needs openssl", "apt-get install openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    with Server(
        tmp_path,
        "--model",
        str(bert_ce_dir),
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key),
        scheme="https",
        verify=str(cert),
    ) as server:
        body = {"query": {"text": "list files"}, "passages": [{"text": "ls lists files"}]}
        r = httpx.post(server.url + "/v1/ranking", json=body, verify=str(cert))
        assert r.status_code == 200 and len(r.json()["rankings"]) == 1
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served on the TLS port
            httpx.post(server.url.replace("https", "http") + "/v1/ranking", json=body)
