"""`rankserve serve --ray`: the app as a Ray Serve deployment on a local cluster (2 CPUs, two
0.5-CPU replicas of a tiny cross-encoder): both replicas answer, answers equal the in-process
server's, and a killed replica costs at most the requests in flight on it."""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest
from conftest import app_client, free_port, require, wait_ready

from rankserve.config import load_config
from rankserve.errors import ConfigError

BODY = {
    "query": {"text": "how do I list files"},
    "passages": [{"text": "ls lists directory contents"}, {"text": "bananas are yellow"}, {"text": "paris"}],
}


def test_scaling_flags():
    from rankserve.deploy.ray_serve import TARGET_ONGOING, Scaling

    assert Scaling.parse(3, None, 0.5, None).options() == {
        "num_replicas": 3,
        "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.0},
    }
    auto = Scaling.parse(None, "1:4", None, 1).options()
    assert auto["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": TARGET_ONGOING,
    }
    assert auto["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1}
    for args in ((2, "1:2", None, None), (None, "4:1", None, None), (None, "x", None, None), (0, None, None, None)):
        with pytest.raises(ConfigError):
            Scaling.parse(*args)


def test_ray_flags_need_ray():
    from rankserve.cli import main

    assert main(["serve", "--replicas", "2"]) == 2  # a one-line usage error, exit status 2


@pytest.fixture(scope="module")
def cluster(bert_ce_dir):
    try:
        import ray
        from ray import serve
    except ImportError:
        ray = None
    require(ray is not None, "Ray Serve is not installed", "pip install 'rankserve[ray]'")
    from rankserve.deploy.ray_serve import APP_NAME, Scaling, application

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = load_config({"model": str(bert_ce_dir), "dtype": "float32", "threads": 1}, environ={})
    serve.run(application(config, Scaling(replicas=2, cpus_per_replica=0.5)), name=APP_NAME, route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def replicas_answering(url: str, n: int = 24) -> dict[str, list]:
    seen: dict[str, list] = {}
    with httpx.Client(timeout=60) as client:
        for _ in range(n):
            r = client.post(url + "/v1/ranking", json=BODY)
            assert r.status_code == 200, r.text
            seen.setdefault(r.headers["x-rankserve-replica"], []).append(r.json()["rankings"])
    return seen


def test_two_replicas_answer_like_the_in_process_server(cluster, bert_ce_dir):
    seen = replicas_answering(cluster)
    assert len(seen) == 2, seen.keys()
    with app_client(model=str(bert_ce_dir), threads=1) as alone:  # a replica's one torch thread
        wait_ready(alone)
        expected = alone.post("/v1/ranking", json=BODY).json()["rankings"]
    for rankings in seen.values():
        for got in rankings:
            assert [r["index"] for r in got] == [r["index"] for r in expected]
            assert [r["logit"] for r in got] == [r["logit"] for r in expected]  # batch-invariant: the same bits
    assert httpx.get(cluster + "/v1/models").json()["data"][0]["id"] == bert_ce_dir.name


def test_killing_a_replica_loses_at_most_its_in_flight_requests(cluster):
    import ray

    seen = replicas_answering(cluster, 8)
    assert len(seen) == 2
    statuses: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    workers = 4

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                try:
                    code = http.post(cluster + "/v1/ranking", json=BODY).status_code
                except httpx.HTTPError:
                    code = -1
                with lock:
                    statuses.append(code)

    threads = [threading.Thread(target=client) for _ in range(workers)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    victim = sorted(seen)[0]  # the header names the replica's actor
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    time.sleep(3.0)  # traffic keeps flowing while Serve notices and replaces the replica
    stop.set()
    for t in threads:
        t.join(timeout=60)
    failed = [s for s in statuses if s != 200]
    print(f"ray replica kill: {len(statuses)} requests, {len(failed)} failed ({sorted(set(failed))})")
    assert len(statuses) > 2 * workers
    assert len(failed) <= workers  # at most the requests in flight when the replica died
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # Serve restarts the replica: two answer again
        if len(replicas_answering(cluster, 12)) == 2:
            break
        time.sleep(1)
    else:
        pytest.fail("the killed replica was not replaced within 90 s")
    assert victim not in replicas_answering(cluster, 12)  # a new replica, not the dead one


def test_kuberay_example_points_at_a_working_builder(bert_ce_dir, bert_bi_dir, tmp_path):
    """deploy/kuberay/rayservice.yaml's import_path resolves and its args build the application
    (with this machine's model folders in place of the PVC paths); the pods' specs are valid."""
    import importlib
    from pathlib import Path

    import yaml

    try:
        import kubernetes_validate
        from ray.serve.deployment import Application
    except ImportError:
        kubernetes_validate = None
    require(kubernetes_validate is not None, "Ray Serve / kubernetes-validate missing", "pip install -e '.[dev]'")
    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy/kuberay/rayservice.yaml").read_text())
    (app,) = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    module, _, name = app["import_path"].partition(":")
    build = getattr(importlib.import_module(module), name)
    args = {**app["args"], "model": f"rerank={bert_ce_dir},embed={bert_bi_dir}"}
    assert isinstance(build(args), Application)
    cluster = doc["spec"]["rayClusterConfig"]
    for spec in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, **spec}
        kubernetes_validate.validate(pod, "1.33.0", strict=True)
