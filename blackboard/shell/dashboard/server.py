"""Serving the dashboard with uvicorn: :func:`serve` for the command line, and
:class:`DashboardServer` to run it in a background thread (tests, notebooks), possibly over
a blackboard the same process uses."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import FrameType

import uvicorn

from blackboard.blackboard import Blackboard
from blackboard.errors import ConfigError
from blackboard.logs import get_logger
from blackboard.shell.dashboard.app import create_app
from blackboard.shell.dashboard.sampler import Sampler
from blackboard.shell.dashboard.settings import DashboardSettings

log = get_logger("dashboard")


class _Server(uvicorn.Server):
    """uvicorn's server, ending the event streams as soon as it is asked to stop (an open
    stream would otherwise hold the graceful shutdown until its timeout)."""

    def __init__(self, config: uvicorn.Config, sampler: Sampler) -> None:
        super().__init__(config)
        self.sampler = sampler

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.sampler.close()
        super().handle_exit(sig, frame)


def _server(board: Blackboard, settings: DashboardSettings) -> _Server:
    app = create_app(board, settings)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    return _Server(config, app.state.dashboard.sampler)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one).

    Raises:
        ConfigError: the address cannot be bound.
    """
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(board: Blackboard, settings: DashboardSettings) -> None:
    """Serve until Ctrl-C or SIGTERM (uvicorn's handlers).

    Raises:
        ConfigError: the settings are refused, or the address cannot be bound.
    """
    settings.check()
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    log.info("dashboard listening", url=f"http://{host}:{port}/", loopback=settings.loopback)
    server = _server(board, settings)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class DashboardServer:
    """The dashboard on a free port in a background thread (``with DashboardServer(...)``).

    Args:
        board: the blackboard to show (may be one the caller also runs workers on).
        settings: its settings; the port is taken from the bound socket.
    """

    def __init__(self, board: Blackboard, settings: DashboardSettings) -> None:
        settings.check()
        self._sock = bind(settings.host, settings.port)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://{settings.host}:{self.port}"
        self._server = _server(board, settings)
        self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def start(self, timeout: float = 10.0) -> DashboardServer:
        """Start serving; returns once the server accepts requests.

        Raises:
            ConfigError: it did not start within ``timeout`` seconds.
        """
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError("the dashboard server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.sampler.close()
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
