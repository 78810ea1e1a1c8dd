"""The Helm chart in deploy/helm/rankserve: linted and rendered with Helm's own Go SDK (through
helm-python-sdk, no helm binary or cluster), every rendered object validated against the
Kubernetes schemas in strict mode (kubernetes-validate), and the wiring checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import require

from rankserve.config import FIELDS, NIM_ENV, ServerConfig, env_name
from rankserve.model_source import HUB_ENV

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "rankserve"
KUBERNETES = "1.33.0"

try:
    import helm_python
    import kubernetes_validate
except ImportError:  # pragma: no cover - the dev extra installs both
    helm_python = kubernetes_validate = None


@pytest.fixture(autouse=True)
def tools():
    require(
        helm_python is not None and kubernetes_validate is not None,
        "helm-python-sdk / kubernetes-validate missing",
        "pip install helm-python-sdk kubernetes-validate",
    )


def render(values: dict | None = None) -> dict[str, dict]:
    """-> {kind: object} for one release (each kind appears at most once in this chart)."""
    chart = helm_python.Chart.load(str(CHART))
    manifests = chart.render(values or {}, name="rs", namespace="search", is_install=True)
    objects = {}
    for text in manifests.values():
        for obj in yaml.safe_load_all(text):
            if obj:
                kubernetes_validate.validate(obj, KUBERNETES, strict=True)  # raises on any schema error
                assert obj["kind"] not in objects
                objects[obj["kind"]] = obj
    return objects


def container(objects: dict[str, dict]) -> dict:
    (c,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def test_lint_is_clean():
    result = helm_python.lint(str(CHART), strict=True)
    assert result["errors"] == [] and not [m for m in result["messages"] if m["severity"] > 1], result


def test_defaults_render_a_probed_autoscaled_cpu_deployment():
    objects = render()
    assert set(objects) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    c = container(objects)
    assert c["readinessProbe"]["httpGet"]["path"] == "/v1/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v1/health/live"
    assert c["startupProbe"]["httpGet"]["path"] == "/v1/health/live"
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert pod["terminationGracePeriodSeconds"] > float(env["RANKSERVE_DRAIN_TIMEOUT"])  # drain before SIGKILL
    assert "replicas" not in objects["Deployment"]["spec"]  # the HPA owns the count
    assert (
        objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
        == objects["Deployment"]["metadata"]["name"]
    )
    selector = objects["Service"]["spec"]["selector"]
    assert selector.items() <= objects["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector


def test_every_environment_variable_is_a_rankserve_setting():
    known = {env_name(f) for f in FIELDS} | set(NIM_ENV.values()) | set(HUB_ENV)
    for model in (
        {"path": "/model", "servedName": "rr"},
        {
            "repo": "BAAI/bge-reranker-v2-m3",
            "revision": "v1",
            "endpoint": "http://mirror:8080",
            "hfToken": {"existingSecret": "hf"},
        },
    ):
        objects = render(
            {
                "env": {"RANKSERVE_DTYPE": "float32"},
                "model": model,
                "gpu": {"enabled": True},
                "apiKey": {"existingSecret": "keys"},
            }
        )
        pod = objects["Deployment"]["spec"]["template"]["spec"]
        for c in pod["containers"] + pod.get("initContainers", []):
            names = [e["name"] for e in c["env"]]
            assert set(names) <= known, sorted(set(names) - known)
            assert len(names) == len(set(names))


def test_a_hub_model_is_fetched_by_an_init_container_into_the_cache_then_served_offline():
    objects = render(
        {
            "model": {
                "repo": "nvidia/llama-3.2-nv-rerankqa-1b-v2",
                "revision": "abc123",
                "hfToken": {"existingSecret": "hf-token"},
            }
        }
    )
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["rankserve", "download", "nvidia/llama-3.2-nv-rerankqa-1b-v2", "--revision", "abc123"]
    assert init["image"] == container(objects)["image"]
    init_env = {e["name"]: e for e in init["env"]}
    assert init_env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    serve_env = {e["name"]: e.get("value") for e in container(objects)["env"]}
    assert serve_env["NIM_MODEL_PATH"] == "nvidia/llama-3.2-nv-rerankqa-1b-v2"
    assert serve_env["RANKSERVE_REVISION"] == "abc123" and serve_env["HF_HUB_OFFLINE"] == "1"
    assert "HF_TOKEN" not in serve_env  # the serving container never downloads, so it holds no token
    cache = init_env["HF_HUB_CACHE"]["value"]
    assert serve_env["HF_HUB_CACHE"] == cache
    assert init["volumeMounts"] == [{"name": "model-cache", "mountPath": cache}]
    assert container(objects)["volumeMounts"] == [{"name": "model-cache", "mountPath": cache, "readOnly": True}]
    assert pod["volumes"] == [{"name": "model-cache", "emptyDir": {"sizeLimit": "20Gi"}}]
    assert pod["securityContext"]["fsGroup"] == 10001  # the non-root init container can write the volume
    shared = render({"model": {"repo": "org/name", "cache": {"persistentVolumeClaim": "hf-cache"}}})
    assert shared["Deployment"]["spec"]["template"]["spec"]["volumes"] == [
        {"name": "model-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}}
    ]
    assert "--revision" not in shared["Deployment"]["spec"]["template"]["spec"]["initContainers"][0]["command"]


def test_repo_and_path_together_are_refused():
    with pytest.raises(Exception, match="model.repo .* or model.path"):
        render({"model": {"repo": "org/name", "path": "/model"}})


def test_gpu_model_volume_and_existing_secret():
    objects = render(
        {
            "gpu": {"enabled": True, "count": 1},
            "image": {"tag": "cuda"},
            "model": {"path": "/model", "persistentVolumeClaim": "models"},
            "apiKey": {"existingSecret": "rankserve-keys"},
        }
    )
    assert "Secret" not in objects  # the key stays in the Secret the operator made
    c = container(objects)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e for e in c["env"]}
    assert env["RANKSERVE_DEVICE"]["value"] == "cuda" and env["NIM_MODEL_PATH"]["value"] == "/model"
    assert env["RANKSERVE_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "rankserve-keys", "key": "api-key"}
    assert c["volumeMounts"] == [{"name": "model", "mountPath": "/model", "readOnly": True}]
    volumes = objects["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert volumes[0]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


def test_api_key_value_creates_a_secret_and_fixed_replicas_without_autoscaling():
    objects = render(
        {
            "apiKey": {"value": "s3cret"},
            "autoscaling": {"enabled": False},
            "replicaCount": 3,
            "podDisruptionBudget": {"enabled": False},
        }
    )
    assert set(objects) == {"Deployment", "Service", "Secret"}
    ref = {e["name"]: e for e in container(objects)["env"]}["RANKSERVE_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == objects["Secret"]["metadata"]["name"]
    import base64

    assert base64.b64decode(objects["Secret"]["data"][ref["key"]]).decode() == "s3cret"
    assert objects["Deployment"]["spec"]["replicas"] == 3


def test_strict_validation_catches_a_bad_object():
    """The validator this file relies on rejects what Kubernetes would (the check can fail)."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": [{"port": "http"}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)
    assert ServerConfig().drain_timeout == 30  # values.yaml's drainTimeoutSeconds mirrors the default
