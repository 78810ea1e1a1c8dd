"""``rankserve serve``: uvicorn around the app, with a graceful drain and a loud exit on failure.

On SIGTERM (or SIGINT) the server first *drains*: readiness answers 503, new API requests get 503
+ Retry-After + ``Connection: close``, the listener stays open so probes and clients see that, and
every request already admitted runs to its answer. When none is left, or ``drain_timeout`` has
passed, uvicorn's own shutdown runs (close the listener, stop the engine), and the process ends
with the signal re-raised, as uvicorn does (exit status 143 for SIGTERM). A second signal skips
the wait. If the app reports a fatal error (the model cannot load, the model worker died), the
server stops and ``serve`` returns 1 so that a supervisor (systemd, Kubernetes, ``docker run
--restart``) sees the failure instead of a process that answers 503 forever.

The listening socket is bound *before* the model loads and handed to uvicorn: a port already in
use ends ``rankserve serve`` at once with a clear error, not after a model load of seconds to
minutes (uvicorn binds only after the app's startup).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from types import FrameType
from typing import Any

import uvicorn

from rankserve import logs
from rankserve.api.app import create_app
from rankserve.config import ServerConfig
from rankserve.errors import ConfigError

log = logging.getLogger("rankserve")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: Any, drain_timeout: float):
        super().__init__(config)
        self.state = state
        self.drain_timeout = drain_timeout
        self.drain_started: float | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if sockets and self.started:  # uvicorn logs "running on ..." only for sockets it bound itself
            scheme = "https" if self.config.is_ssl else "http"
            host, port = sockets[0].getsockname()[:2]
            log.info("listening on %s://%s:%d (Ctrl+C to stop)", scheme, f"[{host}]" if ":" in host else host, port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_started is None and not self.should_exit:
            self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does
            self.drain_started = time.monotonic()
            self.state.draining = True
            log.info(
                "signal %d: draining %d request(s) in flight (up to %g s)", sig, self.state.active, self.drain_timeout
            )
            return
        super().handle_exit(sig, frame)

    def stop(self) -> None:
        """Shut down without a drain (the app is unusable)."""
        self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and not self.should_exit:
            waited = time.monotonic() - self.drain_started
            if self.state.active == 0:
                log.info("drained in %.1f s", waited)
                self.should_exit = True
            elif waited >= self.drain_timeout:
                log.warning(
                    "drain timeout (%g s): %d request(s) still running are cut off",
                    self.drain_timeout,
                    self.state.active,
                )
                self.should_exit = True
        return await super().on_tick(counter)


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound as uvicorn binds it (SO_REUSEADDR, IPv6 for a ':' host)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use (another server is listening there): "
                "stop it or pick another --port"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def serve(config: ServerConfig) -> int:
    """Run the server until it is stopped; 0 after a clean stop, 1 if the app failed."""
    logs.configure(config.log_level, config.log_format)
    sock = listen(config.host, config.port)  # before the model loads: a busy port fails at once
    server: DrainingServer | None = None

    def on_fatal(_message: str) -> None:
        if server is not None:
            server.stop()

    app = create_app(config, on_fatal=on_fatal)
    server = DrainingServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level.lower(),
            log_config=None,
            access_log=False,
            ssl_certfile=config.ssl_certfile,
            ssl_keyfile=config.ssl_keyfile,
            timeout_graceful_shutdown=max(config.drain_timeout, 1.0),  # type: ignore[arg-type]  # float works
        ),
        app.state,
        config.drain_timeout,
    )
    server.run(sockets=[sock])
    return 1 if app.state.fatal is not None else 0
