"""Settings precedence: flag > RANKSERVE_* > NIM_* > default; bad values fail at start."""

from __future__ import annotations

import pytest

from rankserve.cli import build_parser, config_from
from rankserve.config import load_config
from rankserve.errors import ConfigError


def test_defaults():
    c = load_config(environ={})
    assert (c.model, c.port, c.max_passages, c.dtype) == (None, 8000, 1000, "auto")


def test_precedence(tmp_path):
    env = {
        "NIM_HTTP_API_PORT": "9001",
        "RANKSERVE_PORT": "9002",
        "NIM_LOG_LEVEL": "debug",
        "NIM_MODEL_PATH": str(tmp_path),
        "RANKSERVE_MAX_BATCH_TOKENS": "4096",
    }
    c = load_config(environ=env)
    assert (c.port, c.log_level, c.model, c.max_batch_tokens) == (9002, "debug", str(tmp_path), 4096)
    assert load_config({"port": 9003}, environ=env).port == 9003


def test_cli_flags_become_config(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKSERVE_MAX_PASSAGES", "7")
    args = build_parser().parse_args(
        ["serve", "--model", str(tmp_path), "--max-batch-tokens", "2048", "--no-warmup", "--cpu-gemm", "onednn"]
    )
    c = config_from(args)
    assert (c.model, c.max_batch_tokens, c.max_passages, c.warmup) == (str(tmp_path), 2048, 7, False)
    assert c.cpu_gemm == "onednn" and load_config(environ={}).cpu_gemm == "auto"


@pytest.mark.parametrize(
    "overrides,word",
    [
        ({"dtype": "int4"}, "dtype"),
        ({"port": 0}, "port"),
        ({"max_passages": 0}, "max_passages"),
        ({"model": "/nonexistent/dir"}, "model"),
        ({"device": "tpu"}, "device"),
        ({"rerank_template": "question:{query}"}, "rerank_template"),
        ({"max_batch_tokens": -1}, "max_batch_tokens"),
        ({"cpu_gemm": "blas"}, "cpu_gemm"),
    ],
)
def test_invalid_values(overrides, word):
    with pytest.raises(ConfigError, match=word):
        load_config(overrides, environ={})


def test_bad_env_integer():
    with pytest.raises(ConfigError, match="max_passages must be an integer"):
        load_config(environ={"RANKSERVE_MAX_PASSAGES": "lots"})


def test_batch_token_budget_defaults_per_device():
    """0 (the default) means the device's budget; a configured budget wins everywhere."""
    from rankserve.engine.engine import batch_tokens

    assert load_config(environ={}).max_batch_tokens == 0
    assert batch_tokens(0, "cpu") == 4096
    assert batch_tokens(0, "cuda") == 65536
    assert batch_tokens(2048, "cuda") == batch_tokens(2048, "cpu") == 2048


def test_grpc_port_from_flag_rankserve_env_and_nim_names():
    assert load_config({}, environ={}).grpc_port == 0  # off by default
    assert load_config({"grpc_port": 9001}, environ={"NIM_GRPC_API_PORT": "8001"}).grpc_port == 9001
    assert load_config({}, environ={"NIM_GRPC_API_PORT": "8001"}).grpc_port == 8001
    assert load_config({}, environ={"NIM_SERVER_GRPC_BIND_ADDR": "0.0.0.0:8011"}).grpc_port == 8011
    assert (
        load_config({}, environ={"RANKSERVE_GRPC_PORT": "7001", "NIM_SERVER_GRPC_BIND_ADDR": ":8011"}).grpc_port == 7001
    )
    for bad in ({"grpc_port": 70000}, {"grpc_port": 8000, "port": 8000}):
        with pytest.raises(ConfigError, match="grpc_port"):
            load_config(bad, environ={})


def test_grpc_with_ray_is_refused(capsys):
    from rankserve.cli import main

    assert main(["serve", "--ray", "--grpc-port", "9001"]) != 0
    assert "--grpc-port is not supported with --ray" in capsys.readouterr().err
