"""Ray Serve: the same FastAPI app as an ingress deployment, one set of engines per replica.

Why Ray Serve and not a home-made fan-out: it already schedules replicas over a cluster, restarts
dead ones, routes around them, and autoscales on ongoing requests. Each replica loads the
configured model(s) once (``config.model_entries``), in its own process, and serves the whole API;
Ray's HTTP proxy listens on ``--host``/``--port`` and spreads requests over the replicas. Every
response names its replica in ``X-Rankserve-Replica``.

    rankserve serve --ray --replicas 2              # a local Ray cluster on this machine
    rankserve serve --ray --autoscale 1:8 --ray-address auto   # join a running cluster
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

from rankserve.config import ServerConfig
from rankserve.errors import ConfigError

log = logging.getLogger("rankserve")
APP_NAME = "rankserve"
# Autoscaling target: ongoing requests per replica before Ray adds one. Our batcher wants a few
# requests queued to fill batches; 8 keeps replicas busy without deep queues.
TARGET_ONGOING = 8


@dataclass(frozen=True)
class Scaling:
    """``--replicas N`` (fixed) or ``--autoscale MIN:MAX``; CPUs (and GPUs) each replica reserves."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0

    @classmethod
    def parse(cls, replicas: int | None, autoscale: str | None, cpus: float | None, gpus: float | None) -> Scaling:
        if replicas is not None and autoscale is not None:
            raise ConfigError("give --replicas or --autoscale, not both")
        bounds = None
        if autoscale is not None:
            try:
                low, high = (int(x) for x in autoscale.split(":"))
            except ValueError:
                raise ConfigError(f"--autoscale {autoscale!r}: expected MIN:MAX, e.g. 1:4") from None
            if not 0 <= low <= high or high < 1:
                raise ConfigError(f"--autoscale {autoscale!r}: need 0 <= MIN <= MAX and MAX >= 1")
            bounds = (low, high)
        if replicas is not None and replicas < 1:
            raise ConfigError("--replicas must be >= 1")
        return cls(
            replicas=replicas or 1,
            autoscale=bounds,
            cpus_per_replica=1.0 if cpus is None else cpus,
            gpus_per_replica=0.0 if gpus is None else gpus,
        )

    def options(self) -> dict[str, Any]:
        actor = {"num_cpus": self.cpus_per_replica, "num_gpus": self.gpus_per_replica}
        if self.autoscale is None:
            return {"num_replicas": self.replicas, "ray_actor_options": actor}
        low, high = self.autoscale
        return {
            "ray_actor_options": actor,
            "autoscaling_config": {
                "min_replicas": low,
                "max_replicas": high,
                "target_ongoing_requests": TARGET_ONGOING,
            },
        }


def application(config: ServerConfig, scaling: Scaling):
    """The Ray Serve application (``serve.run`` it): a deployment whose replicas each hold the
    configured models and serve rankserve's app."""
    from ray import serve

    @serve.ingress()
    class Replica:
        def __init__(self, config: ServerConfig):
            self.config = config
            # The replica's full id (its actor's name in the "serve" namespace: ray.get_actor(id, "serve")).
            self.replica_id = serve.get_replica_context().replica_id.to_full_id_str()

        async def __serve_build_asgi_app__(self) -> Any:  # after __init__, in the replica
            from rankserve.api.app import create_app
            from rankserve.engine.engine import Engine
            from rankserve.metrics import Metrics

            engines = []
            for entry in self.config.model_entries():
                engines.append(await asyncio.to_thread(Engine.load, self.config.for_model(*entry), Metrics()))
            self.rankserve_app = create_app(self.config, engines, replica=self.replica_id)
            return self.rankserve_app

        async def check_health(self) -> None:
            """Ray restarts a replica whose app cannot serve (a model worker died)."""
            app = getattr(self, "rankserve_app", None)  # None until the app is built
            if app is not None and app.state.fatal is not None:
                raise RuntimeError(app.state.fatal)

    deployment = serve.deployment(Replica, name="rankserve", **scaling.options())
    return deployment.bind(config)


def build(args: dict[str, Any]):
    """Ray Serve's ``import_path`` entry (KubeRay's RayService, ``serve run``/``serve deploy``):
    ``args`` are rankserve settings by field name (``model``, ``dtype``, ...; env vars still
    apply) plus ``replicas`` or ``autoscale`` (``"MIN:MAX"``) and ``ray_cpus`` / ``ray_gpus``."""
    from rankserve.config import load_config

    args = dict(args)
    scaling = Scaling.parse(
        args.pop("replicas", None), args.pop("autoscale", None), args.pop("ray_cpus", None), args.pop("ray_gpus", None)
    )
    return application(load_config(args), scaling)


def run(config: ServerConfig, scaling: Scaling, address: str | None = None) -> int:
    """Start (or join) a Ray cluster, deploy, and block until interrupted; then shut Serve down."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ConfigError("--ray needs Ray Serve: pip install 'rankserve[ray]'") from None
    if config.ssl_certfile:
        raise ConfigError("--ray serves HTTP through Ray's proxy; terminate TLS in front of it (no --ssl-certfile)")
    ray.init(address=address, include_dashboard=False, ignore_reinit_error=True)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(application(config, scaling), name=APP_NAME, route_prefix="/")
    log.info("ray serve: %s on http://%s:%d", scaling, config.host, config.port)
    try:
        import signal
        import threading

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
