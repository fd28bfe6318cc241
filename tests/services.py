"""Pytest plugin: real Kafka and Redis servers for the tests that need them.

Register it from ``tests/conftest.py`` with ``pytest_plugins = ["tests.services"]``.

Fixtures:

- ``kafka_bootstrap`` (session): ``"host:port"`` of a single-node Kafka broker.
- ``kafka_legacy_bootstrap`` (session): the same for a broker of the other Kafka release the
  fault tests cover (:data:`compose.kafka_local.LEGACY_KAFKA_VERSION`, 3.9.x), from
  ``KAFKA_LEGACY_BOOTSTRAP_SERVERS`` or the jar launcher, started only when a test asks.
- ``redis_url`` (session): ``"redis://host:port/0"`` of a Redis server with AOF on.
- ``kafka_url`` (session): ``"kafka://host:port"``, the store URL of ``kafka_bootstrap``. This
  and ``redis_url`` are the server fixtures the backend registry names
  (``blackboard.stores.BACKENDS``), through which the contract suite gets its servers.
- ``kafka_local`` / ``redis_local`` (function): the launcher behind them
  (:class:`compose.kafka_local.KafkaLocal`, :class:`compose.redis_local.RedisLocal`) for fault
  tests that kill and restart the server; skipped when the server came from the environment
  or from testcontainers. After the test the server is running again.

Helper: :func:`unique_name` for a fresh topic prefix, group or stream name per test.

Where a server comes from (docs/DESIGN.md section 7), decided once per run, the first time a
test asks for it:

1. ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL`` if set (must answer a TCP connect);
2. testcontainers, if importable and a Docker engine answers a ``/_ping`` quickly
   (``KAFKA_BLACKBOARD_TESTCONTAINERS=0`` turns this off);
3. the launchers in ``compose/``: one broker / server per run on free loopback ports in
   pytest's temporary directory, stopped at the end of the session.

A server that cannot be had fails the tests asking for it when ``CI=true``; locally they are
skipped with the reason. Which server was used is printed in the terminal summary.
"""

from __future__ import annotations

import importlib
import os
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal, NoReturn
from urllib.parse import urlsplit

import pytest

from blackboard.stores import BACKENDS
from compose.kafka_local import LEGACY_KAFKA_VERSION, KafkaLocal, KafkaLocalError
from compose.redis_local import RedisLocal, RedisLocalError

DEFAULT_KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"  # testcontainers' KafkaContainer needs cp-kafka
DEFAULT_REDIS_IMAGE = "redis:7.4"

_SUMMARY = pytest.StashKey[list[str]]()


def unique_name(prefix: str = "t") -> str:
    """Return ``<prefix>-<12 hex digits>``, a name no other test (or run) uses.

    Use it for topic prefixes, consumer groups, transactional ids and stream keys, so tests
    sharing one session broker never see each other's data.
    """
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def in_ci() -> bool:
    """Tell whether this run is CI (``CI=true``), where missing servers fail instead of skip."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a server that cannot start fails the run)", pytrace=False)
    pytest.skip(reason)


@dataclass
class Service:
    """A server the tests use: its address, where it came from, and how to release it."""

    address: str
    source: Literal["env", "testcontainers", "local"]
    launcher: KafkaLocal | RedisLocal | None = None
    close: Callable[[], object] | None = None


# -- Docker detection -----------------------------------------------------------------------


def _docker_candidates() -> list[str]:
    host = os.environ.get("DOCKER_HOST")
    if host:
        return [host]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    paths = ["/var/run/docker.sock", str(Path.home() / ".docker" / "run" / "docker.sock")]
    if runtime:
        paths.insert(1, str(Path(runtime) / "docker.sock"))
    return [f"unix://{p}" for p in paths]


def docker_answers(timeout: float = 0.5) -> bool:
    """Tell whether a Docker engine answers ``GET /_ping`` within ``timeout`` seconds."""
    for endpoint in _docker_candidates():
        parts = urlsplit(endpoint)
        try:
            if parts.scheme == "unix":
                if not Path(parts.path).exists():
                    continue
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(parts.path)
            elif parts.scheme == "tcp" and parts.hostname:
                tls = os.environ.get("DOCKER_TLS_VERIFY") or parts.port == 2376
                sock = socket.create_connection((parts.hostname, parts.port or 2375), timeout)
                if tls:  # answering TLS needs certificates; a connect is the best cheap sign
                    sock.close()
                    return True
            else:
                continue
            with sock:
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                if sock.recv(64).split(b" ")[1:2] == [b"200"]:
                    return True
        except (OSError, IndexError):
            continue
    return False


def _testcontainers_wanted() -> bool:
    if os.environ.get("KAFKA_BLACKBOARD_TESTCONTAINERS", "1").strip().lower() in ("0", "false"):
        return False
    try:
        importlib.import_module("testcontainers.core")
    except ImportError:
        return False
    return docker_answers()


def _tc_module(name: str) -> ModuleType:
    """Import a testcontainers module (``community.<name>`` since 4.1x, ``<name>`` before)."""
    try:
        return importlib.import_module(f"testcontainers.community.{name}")
    except ImportError:
        return importlib.import_module(f"testcontainers.{name}")


def _tcp_answers(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- Kafka ----------------------------------------------------------------------------------


def _kafka_from_env(bootstrap: str) -> Service:
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    if not _tcp_answers(host or "127.0.0.1", int(port or 9092)):
        _unavailable(f"KAFKA_BOOTSTRAP_SERVERS={bootstrap} does not answer")
    return Service(bootstrap, "env")


def _kafka_container() -> Service:
    module = _tc_module("kafka")
    image = os.environ.get("KAFKA_BLACKBOARD_KAFKA_IMAGE", DEFAULT_KAFKA_IMAGE)
    container = (
        module.KafkaContainer(image)
        .with_kraft()
        # One broker: the transaction log needs RF = min ISR = 1, or transactions hang.
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    container.start()
    return Service(str(container.get_bootstrap_server()), "testcontainers", close=container.stop)


def _kafka_local(tmp: pytest.TempPathFactory, version: str | None = None) -> Service:
    kwargs = {"version": version} if version else {}
    broker = KafkaLocal(data_dir=tmp.mktemp("kafka"), die_with_parent=True, **kwargs)
    try:
        broker.start()
    except KafkaLocalError as exc:
        error = str(exc)  # reported outside the handler: no chained traceback in the report
    else:
        return Service(broker.bootstrap, "local", launcher=broker, close=broker.stop)
    _unavailable(f"local Kafka {broker.version} broker did not start: {error}")


def _make_legacy_kafka(tmp: pytest.TempPathFactory) -> Service:
    env = os.environ.get("KAFKA_LEGACY_BOOTSTRAP_SERVERS", "").strip()
    if env:
        return _kafka_from_env(env)
    return _kafka_local(tmp, LEGACY_KAFKA_VERSION)


def _make_kafka(tmp: pytest.TempPathFactory) -> Service:
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if env:
        return _kafka_from_env(env)
    if _testcontainers_wanted():
        try:
            return _kafka_container()
        except Exception as exc:  # any Docker/image trouble: the jar broker still works
            warnings.warn(
                f"testcontainers Kafka failed, using the local broker: {exc}", stacklevel=1
            )
    return _kafka_local(tmp)


# -- Redis ----------------------------------------------------------------------------------


def _redis_from_env(url: str) -> Service:
    parts = urlsplit(url)
    if not _tcp_answers(parts.hostname or "127.0.0.1", parts.port or 6379):
        _unavailable(f"REDIS_URL={url} does not answer")
    return Service(url, "env")


def _redis_container() -> Service:
    module = _tc_module("redis")
    image = os.environ.get("KAFKA_BLACKBOARD_REDIS_IMAGE", DEFAULT_REDIS_IMAGE)
    container = module.RedisContainer(image).with_command("redis-server --appendonly yes")
    container.start()
    host = str(container.get_container_host_ip())
    port = int(container.get_exposed_port(6379))
    return Service(f"redis://{host}:{port}/0", "testcontainers", close=container.stop)


def _redis_local(tmp: pytest.TempPathFactory) -> Service:
    server = RedisLocal(data_dir=tmp.mktemp("redis"), appendonly=True, die_with_parent=True)
    try:
        server.start()
    except RedisLocalError as exc:
        error = str(exc)  # reported outside the handler: no chained traceback in the report
    else:
        return Service(server.url, "local", launcher=server, close=server.stop)
    _unavailable(f"local redis-server did not start: {error}")


def _make_redis(tmp: pytest.TempPathFactory) -> Service:
    env = os.environ.get("REDIS_URL", "").strip()
    if env:
        return _redis_from_env(env)
    if _testcontainers_wanted():
        try:
            return _redis_container()
        except Exception as exc:  # any Docker/image trouble: the local binary still works
            warnings.warn(f"testcontainers Redis failed, using redis-server: {exc}", stacklevel=1)
    return _redis_local(tmp)


# -- fixtures -------------------------------------------------------------------------------


def _serve(
    name: str,
    make: Callable[[pytest.TempPathFactory], Service],
    tmp: pytest.TempPathFactory,
    config: pytest.Config,
) -> Iterator[Service]:
    started = time.monotonic()
    service = make(tmp)
    took = time.monotonic() - started
    config.stash.setdefault(_SUMMARY, []).append(
        f"{name}: {service.address} from {service.source} (ready in {took:.1f}s)"
    )
    try:
        yield service
    finally:
        if service.close is not None:
            service.close()


@pytest.fixture(scope="session")
def kafka_service(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Service]:
    """The session's Kafka broker as a :class:`Service` (started on first use)."""
    yield from _serve("kafka", _make_kafka, tmp_path_factory, pytestconfig)


@pytest.fixture(scope="session")
def kafka_legacy_service(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Service]:
    """The session's broker of the other Kafka release (started on first use)."""
    yield from _serve(
        f"kafka {LEGACY_KAFKA_VERSION}", _make_legacy_kafka, tmp_path_factory, pytestconfig
    )


@pytest.fixture(scope="session")
def kafka_legacy_bootstrap(kafka_legacy_service: Service) -> str:
    """``host:port`` of the session's Kafka 3.9.x broker."""
    return kafka_legacy_service.address


@pytest.fixture(scope="session")
def redis_service(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Service]:
    """The session's Redis server as a :class:`Service` (started on first use)."""
    yield from _serve("redis", _make_redis, tmp_path_factory, pytestconfig)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_service: Service) -> str:
    """``host:port`` of the session's Kafka broker, for ``bootstrap.servers``."""
    return kafka_service.address


@pytest.fixture(scope="session")
def kafka_url(kafka_bootstrap: str) -> str:
    """``kafka://host:port``: the store URL of the session's Kafka broker."""
    return f"kafka://{kafka_bootstrap}"


@pytest.fixture(scope="session")
def redis_url(redis_service: Service) -> str:
    """``redis://host:port/0`` of the session's Redis server (AOF on when we start it)."""
    return redis_service.address


@pytest.fixture
def kafka_local(kafka_service: Service) -> Iterator[KafkaLocal]:
    """The launcher of the session broker, for tests that kill or restart it.

    Skipped when the broker came from ``KAFKA_BOOTSTRAP_SERVERS`` or testcontainers. The
    broker is running again (same port, same data) after the test.
    """
    broker = kafka_service.launcher
    if not isinstance(broker, KafkaLocal):
        pytest.skip(f"Kafka from {kafka_service.source} cannot be killed or restarted here")
    yield broker
    if not broker.is_running():
        broker.restart()


@pytest.fixture
def redis_local(redis_service: Service) -> Iterator[RedisLocal]:
    """The launcher of the session Redis, for tests that kill or restart it.

    Skipped when Redis came from ``REDIS_URL`` or testcontainers. The server is running
    again (same port, same data dir) after the test.
    """
    server = redis_service.launcher
    if not isinstance(server, RedisLocal):
        pytest.skip(f"Redis from {redis_service.source} cannot be killed or restarted here")
    yield server
    if not server.is_running():
        server.restart()


# -- hooks ----------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """Register the server marker of every backend in the registry that pyproject does not
    register already (``--strict-markers`` refuses unknown ones)."""
    known = {line.partition(":")[0].strip() for line in config.getini("markers")}
    for backend in BACKENDS.values():
        if backend.marker and backend.marker not in known:
            config.addinivalue_line(
                "markers", f"{backend.marker}: needs a real {backend.scheme}:// server"
            )


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Say which servers this run used and where they came from."""
    lines = config.stash.get(_SUMMARY, [])
    if lines:
        terminalreporter.write_sep("-", "services")
        for line in lines:
            terminalreporter.write_line(line)
