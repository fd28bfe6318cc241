"""Run a single-node Apache Kafka broker (KRaft) from Maven Central jars, without Docker.

Command line (stdlib only)::

    python compose/kafka_local.py fetch                 # jars into the cache, once
    python compose/kafka_local.py start [--port 9092]   # format if new, launch, wait until ready
    python compose/kafka_local.py status [--json]       # exit 0 running, 3 stopped
    python compose/kafka_local.py kill                  # SIGKILL (fault tests)
    python compose/kafka_local.py restart               # same data dir and ports, no reformat
    python compose/kafka_local.py stop                  # SIGTERM, wait

Python API, as used by the pytest fixtures in ``tests/services.py``::

    broker = KafkaLocal()            # free loopback ports, temporary data dir
    broker.start()
    broker.bootstrap                 # "127.0.0.1:PORT"
    broker.kill(); broker.restart()  # hard crash, then the same dir and ports again
    broker.stop(); broker.cleanup()

Jars come from ``compose/kafka/pom.xml`` through ``mvn dependency:copy-dependencies`` into
``${KAFKA_BLACKBOARD_CACHE:-~/.cache/kafka-blackboard}/kafka-<version>/libs``, which survives
reruns. A data dir holds everything of one broker::

    server.properties  log4j2.properties  kafka-local.json (ports, cluster id)
    kafka.pid  kafka.log (broker log)  kafka.out (JVM stdout/stderr)  kraft/ (log.dirs)

Only the process recorded in ``kafka.pid`` is ever signalled, and only after checking that
it still is a ``kafka.Kafka`` JVM running this data dir's ``server.properties`` (PIDs get
reused). Every failure raises :class:`KafkaLocalError` with a one-line message; the command
line prints it and exits 1.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

if __package__:
    from compose.localserver import (
        HOST,
        LocalServer,
        as_int,
        cache_root,
        free_port,
        parent_death_signal,
        port_is_free,
        tail,
    )
else:  # run as a script: python compose/kafka_local.py
    from localserver import (  # type: ignore[no-redef,import-not-found]
        HOST,
        LocalServer,
        as_int,
        cache_root,
        free_port,
        parent_death_signal,
        port_is_free,
        tail,
    )


KAFKA_VERSION = "4.0.1"
"""Pinned Apache Kafka release; ``compose/kafka/pom.xml`` has the same default."""
LEGACY_KAFKA_VERSION = "3.9.1"
"""The other release the fault tests run on (docs/DESIGN.md section 7: 4.0.x and 3.9.x)."""

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
MIN_JAVA = 17  # Kafka 4.x brokers need Java 17+.
DEFAULT_CLI_PORT = 9092  # same as compose/docker-compose.yml
STATUS_STOPPED_EXIT = 3  # LSB "program is not running"

_PID_FILE = "kafka.pid"
_STATE_FILE = "kafka-local.json"
_LOG_FILE = "kafka.log"
_OUT_FILE = "kafka.out"
_LOG_DIRS = "kraft"
_READY_LINE = "Kafka Server started"
# Jars whose presence marks a usable fetch (kafka.Kafka, kafka.tools.StorageTool, logging).
_REQUIRED_JARS = ("kafka_2.13-{v}.jar", "kafka-server-{v}.jar", "kafka-metadata-{v}.jar")
_COMPLETE_MARKER = ".complete"


class KafkaLocalError(Exception):
    """A local broker could not be fetched, started, signalled or reached."""


def _tcp_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _random_cluster_id() -> str:
    # Kafka's Uuid string form: URL-safe base64 of 16 bytes, no padding; Kafka's own
    # generator avoids a leading "-" so the id never looks like a command-line flag.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _process_args(pid: int) -> list[str] | None:
    """Return the argv of a live (non-zombie) process, or None if there is none."""
    proc = Path("/proc") / str(pid)
    if Path("/proc/self").exists():
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return None
            raw = (proc / "cmdline").read_bytes()
        except OSError:
            return None
        return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a] or None
    # No /proc (macOS): ask ps; a zombie shows up with state Z.
    res = subprocess.run(
        ["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    out = res.stdout.strip()
    if res.returncode != 0 or not out or out.startswith("Z"):
        return None
    return out.split()[1:]


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise KafkaLocalError(
            "java not found: install a JDK 17+ (apt-get install default-jdk-headless) "
            "or set JAVA_HOME"
        )
    return found


def _check_java(java: str) -> None:
    res = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', res.stderr + res.stdout)
    if res.returncode != 0 or not match:
        raise KafkaLocalError(f"{java} -version failed: {(res.stderr or res.stdout).strip()}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_x" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise KafkaLocalError(
            f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+, found {major} at {java}"
        )


@dataclass(frozen=True)
class KafkaStatus:
    """A snapshot of one local broker, as printed by ``status``."""

    state: Literal["running", "stopped"]
    pid: int | None
    bootstrap: str | None
    port: int | None
    controller_port: int | None
    data_dir: str
    log_file: str
    version: str

    def as_dict(self) -> dict[str, object]:
        """Return the fields as a JSON-ready dict."""
        return asdict(self)

    def line(self) -> str:
        """Return a one-line human summary."""
        if self.state == "running":
            return (
                f"running pid={self.pid} bootstrap={self.bootstrap} "
                f"data_dir={self.data_dir} log={self.log_file}"
            )
        return f"stopped data_dir={self.data_dir}"


class KafkaLocal(LocalServer):
    """One single-node KRaft broker on 127.0.0.1, run from cached jars.

    Args:
        port: client listener port; 0 picks a free port (or the one recorded in the data dir).
        controller_port: KRaft controller port; 0 picks a free port (or the recorded one).
        data_dir: directory of this broker; None creates a temporary one that
            :meth:`cleanup` removes.
        version: Kafka release to fetch and run.
        heap: JVM ``-Xmx`` value.
        start_timeout: seconds :meth:`start` waits for the broker to answer.
        extra_properties: ``server.properties`` entries added or overriding the defaults.
        die_with_parent: Linux only: the broker gets SIGTERM when the process that started
            it dies (pytest fixtures use this so a killed test run leaks no broker).
    """

    pid_file = _PID_FILE

    def __init__(
        self,
        *,
        port: int = 0,
        controller_port: int = 0,
        data_dir: str | Path | None = None,
        version: str = KAFKA_VERSION,
        heap: str = "512m",
        start_timeout: float = 90.0,
        extra_properties: Mapping[str, str] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.version = version
        self.heap = heap
        self.start_timeout = start_timeout
        self.extra_properties = dict(extra_properties or {})
        self.die_with_parent = die_with_parent
        self._owns_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="kafka-local-")).resolve()
            if data_dir is None
            else Path(data_dir).expanduser().resolve()
        )
        state = self._read_state()
        self.port = port or as_int(state.get("port"))
        self.controller_port = controller_port or as_int(state.get("controller_port"))
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths -------------------------------------------------------------------------

    @property
    def home(self) -> Path:
        """The cache directory of this Kafka version (holds ``libs/``)."""
        return cache_root() / f"kafka-{self.version}"

    @property
    def libs_dir(self) -> Path:
        """Directory of the broker's jars."""
        return self.home / "libs"

    @property
    def log_file(self) -> Path:
        """The broker's log4j log."""
        return self.data_dir / _LOG_FILE

    @property
    def server_properties(self) -> Path:
        """The generated ``server.properties``."""
        return self.data_dir / "server.properties"

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``.

        Raises:
            KafkaLocalError: no port has been chosen yet (never started).
        """
        if not self.port:
            raise KafkaLocalError(f"broker in {self.data_dir} has no port yet: start it first")
        return f"{HOST}:{self.port}"

    # -- fetch -------------------------------------------------------------------------

    def fetch(self) -> Path:
        """Copy the pinned broker jars into the cache unless a complete copy is there.

        Returns:
            The ``libs`` directory.

        Raises:
            KafkaLocalError: Maven is missing or the fetch failed.
        """
        libs = self.libs_dir
        if (libs / _COMPLETE_MARKER).is_file():
            return libs
        mvn = shutil.which("mvn")
        if not mvn:
            raise KafkaLocalError(
                "mvn not found: install Maven 3 (apt-get install maven) to fetch the Kafka jars"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        # Copy into a fresh directory and rename it into place, so an interrupted or
        # concurrent fetch never leaves a half-filled libs/ that looks complete.
        tmp = Path(tempfile.mkdtemp(prefix="libs-", dir=self.home))
        fetch_log = self.home / "fetch.log"
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp}",
            f"-Dkafka.version={self.version}",
        ]
        with fetch_log.open("wb") as out:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
        missing = [j.format(v=self.version) for j in _REQUIRED_JARS]
        missing = [j for j in missing if not (tmp / j).is_file()]
        if rc != 0 or missing:
            shutil.rmtree(tmp, ignore_errors=True)
            errors = [ln for ln in tail(fetch_log, 200).splitlines() if "[ERROR]" in ln]
            why = errors[0].strip() if errors else f"missing {', '.join(missing)}"
            raise KafkaLocalError(f"fetch failed (mvn exit {rc}): {why} (full log: {fetch_log})")
        (tmp / _COMPLETE_MARKER).write_text(
            "\n".join(sorted(p.name for p in tmp.glob("*.jar"))) + "\n"
        )
        if (libs / _COMPLETE_MARKER).is_file():  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
            return libs
        shutil.rmtree(libs, ignore_errors=True)  # leftover without marker
        os.replace(tmp, libs)
        return libs

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Fetch if needed, format storage if new, launch the broker and wait until it answers.

        Does nothing if this data dir's broker already runs.

        Raises:
            KafkaLocalError: java/mvn missing, a port busy, format failed, or the broker
                exited or did not answer within ``start_timeout`` (message ends with the
                last lines of its log).
        """
        if self.pid() is not None:
            return
        libs = self.fetch()
        java = _java()
        _check_java(java)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._choose_ports()
        self._write_config()
        if not (self.data_dir / _LOG_DIRS / "meta.properties").is_file():
            self._format(java, libs)
        self._launch(java, libs)

    def kill(self) -> bool:
        """Send SIGKILL to the recorded broker (a crash, for fault tests) and wait until gone.

        Caveat (Kafka 4.1 and later, checked up to 4.4.0; KAFKA-20734): a commit caught
        between its PrepareCommit and its markers can lose its markers after :meth:`restart`.
        The restarted node first acts on its old metadata: it leads every partition, and its
        transaction coordinator resends the pending markers, which cannot land yet (requests
        are served only once the node is unfenced). Then the controller fences the old
        registration, every partition is leaderless for a moment, and the coordinator takes
        "no leader" for "partition deleted": it drops the markers and may record the commit
        as complete. Those partitions then stay open (``read_committed`` readers stop there)
        until the same producer commits to them again; a new producer epoch never closes them.
        Kafka 4.0 and 3.9 (whose metadata cache answers "no node yet") retry such markers,
        which is why :data:`KAFKA_VERSION` is pinned to 4.0.x until that fix is released.

        Returns:
            True if a broker was running.
        """
        return super().kill()

    def restart(self) -> None:
        """Stop the broker if it runs, then start it on the same data dir and ports.

        Storage is not reformatted, so committed records, offsets and transactions survive.

        Raises:
            KafkaLocalError: as :meth:`start`; also if the data dir was never started.
        """
        if not self.port or not (self.data_dir / _LOG_DIRS / "meta.properties").is_file():
            raise KafkaLocalError(f"nothing to restart in {self.data_dir}: start it first")
        self.stop()
        self.start()

    # -- inspection --------------------------------------------------------------------

    def status(self) -> KafkaStatus:
        """Return a :class:`KafkaStatus` snapshot."""
        pid = self.pid()
        return KafkaStatus(
            state="running" if pid is not None else "stopped",
            pid=pid,
            bootstrap=f"{HOST}:{self.port}" if pid is not None and self.port else None,
            port=self.port or None,
            controller_port=self.controller_port or None,
            data_dir=str(self.data_dir),
            log_file=str(self.log_file),
            version=self.version,
        )

    def log_tail(self, lines: int = 40) -> str:
        """Return the last lines of the JVM output and of the broker log."""
        out = tail(self.data_dir / _OUT_FILE, 10)
        log = tail(self.log_file, lines)
        return "\n".join(part for part in (out, log) if part) or "(no log output)"

    # -- internals ---------------------------------------------------------------------

    def _read_state(self) -> dict[str, object]:
        try:
            data = json.loads((self.data_dir / _STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _is_ours(self, pid: int) -> bool:
        args = _process_args(pid) or []
        return "kafka.Kafka" in args and str(self.server_properties) in args

    def _choose_ports(self) -> None:
        if not self.port:
            self.port = free_port()
        if not self.controller_port:
            self.controller_port = free_port()
            while self.controller_port == self.port:
                self.controller_port = free_port()
        for name, port, flag in (
            ("port", self.port, "--port"),
            ("controller port", self.controller_port, "--controller-port"),
        ):
            if not port_is_free(port):
                raise KafkaLocalError(f"{name} {HOST}:{port} is busy: pick another with {flag}")

    def _write_config(self) -> None:
        state = self._read_state()
        cluster_id = str(state.get("cluster_id") or _random_cluster_id())
        state.update(
            version=self.version,
            port=self.port,
            controller_port=self.controller_port,
            cluster_id=cluster_id,
        )
        (self.data_dir / _STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(self.data_dir / _LOG_DIRS),
            # One node: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a hard kill the controller refuses the node's re-registration until the
            # old session expires (default 9 s): keep restarts in fault tests short.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            # Topics are created explicitly (all artifact topics of a blackboard need the
            # same partition count); auto-creation would hide a missing create and give
            # num.partitions instead.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "log.segment.bytes": str(16 * 1024 * 1024),
            "log.retention.hours": "24",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        }
        props.update(self.extra_properties)
        self.server_properties.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log_file = self.log_file
        (self.data_dir / "log4j2.properties").write_text(
            "status = warn\n"
            "shutdownHook = disable\n"
            "appender.file.type = RollingFile\n"
            "appender.file.name = FILE\n"
            f"appender.file.fileName = {log_file}\n"
            f"appender.file.filePattern = {log_file}.%i\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "appender.file.policies.type = Policies\n"
            "appender.file.policies.size.type = SizeBasedTriggeringPolicy\n"
            "appender.file.policies.size.size = 20MB\n"
            "appender.file.strategy.type = DefaultRolloverStrategy\n"
            "appender.file.strategy.max = 3\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = FILE\n"
        )

    def _jvm(self, java: str, libs: Path, *opts: str) -> list[str]:
        return [
            java,
            *opts,
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-Djava.awt.headless=true",
            "-cp",
            f"{libs}{os.sep}*",
        ]

    def _format(self, java: str, libs: Path) -> None:
        cluster_id = str(self._read_state()["cluster_id"])
        cmd = [
            *self._jvm(java, libs),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.server_properties),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=self.data_dir)
        if res.returncode != 0:
            output = (res.stdout + res.stderr).strip().splitlines()[-5:]
            raise KafkaLocalError(f"storage format failed: {' | '.join(output)}")

    def _launch(self, java: str, libs: Path) -> None:
        cmd = [
            *self._jvm(java, libs, f"-Xmx{self.heap}", "-XX:+ExitOnOutOfMemoryError"),
            "kafka.Kafka",
            str(self.server_properties),
        ]
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with (self.data_dir / _OUT_FILE).open("ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own session and process group: survives our exit
                preexec_fn=parent_death_signal if self.die_with_parent else None,
            )
        (self.data_dir / _PID_FILE).write_text(f"{self._proc.pid}\n")
        try:
            self._wait_ready(log_offset)
        except BaseException:
            self.kill()  # never leave a half-started broker behind
            raise

    def _wait_ready(self, log_offset: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        probe = _admin_probe()
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise KafkaLocalError(
                    f"broker exited with code {code} during startup; last log lines:\n"
                    f"{self.log_tail()}"
                )
            if _tcp_open(self.port):
                ready = probe(self.bootstrap) if probe else self._logged_ready(log_offset)
                if ready:
                    return
            if time.monotonic() > deadline:
                raise KafkaLocalError(
                    f"broker not ready on {self.bootstrap} after {self.start_timeout:.0f}s; "
                    f"last log lines:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _logged_ready(self, log_offset: int) -> bool:
        try:
            with self.log_file.open("rb") as fh:
                if fh.seek(0, os.SEEK_END) >= log_offset:  # else rolled over: read it all
                    fh.seek(log_offset)
                else:
                    fh.seek(0)
                return _READY_LINE.encode() in fh.read()
        except OSError:
            return False


def _admin_probe() -> Callable[[str], bool] | None:
    """Return a readiness check built on confluent_kafka's AdminClient, if importable."""
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:
        return None

    def probe(bootstrap: str) -> bool:
        # log_level 0 keeps librdkafka quiet about refused connections while the
        # broker boots; list_topics proves the broker serves metadata requests.
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        try:
            return bool(admin.list_topics(timeout=2).brokers)
        except Exception:  # any failure just means "not ready yet"
            return False

    return probe


# -- command line ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kafka_local.py",
        description=f"Run a single-node Apache Kafka (KRaft) on {HOST} from jars.",
    )
    parser.add_argument("command", choices=("fetch", "start", "stop", "status", "kill", "restart"))
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"client port (default: recorded in the data dir, else {DEFAULT_CLI_PORT}; 0 = free)",
    )
    parser.add_argument(
        "--controller-port",
        type=int,
        default=None,
        help="KRaft controller port (default: recorded in the data dir, else a free port)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="broker directory (default: <cache>/kafka-<version>/data)",
    )
    parser.add_argument(
        "--version",
        default=KAFKA_VERSION,
        help=f"Kafka release (default {KAFKA_VERSION}; the fault tests also use "
        f"{LEGACY_KAFKA_VERSION})",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (status: 0 running, 3 stopped)."""
    args = _parser().parse_args(argv)
    data_dir = (
        Path(args.data_dir) if args.data_dir else cache_root() / f"kafka-{args.version}" / "data"
    )
    recorded = KafkaLocal(data_dir=data_dir, version=args.version)
    if args.command in ("start",) and args.port is None and not recorded.port:
        args.port = DEFAULT_CLI_PORT
    broker = KafkaLocal(
        data_dir=data_dir,
        port=args.port or 0,
        controller_port=args.controller_port or 0,
        version=args.version,
    )
    try:
        if args.command == "restart" and (
            (args.port and args.port != recorded.port)
            or (args.controller_port and args.controller_port != recorded.controller_port)
        ):
            raise KafkaLocalError(
                f"restart keeps the recorded ports {recorded.port}/{recorded.controller_port}"
            )
        if args.command == "fetch":
            started = time.monotonic()
            libs = broker.fetch()
            result: dict[str, object] = {
                "libs": str(libs),
                "version": broker.version,
                "jars": len(list(libs.glob("*.jar"))),
                "seconds": round(time.monotonic() - started, 1),
            }
            print(json.dumps(result) if args.json else f"kafka {broker.version} jars in {libs}")
            return 0
        if args.command == "start":
            broker.start()
        elif args.command == "restart":
            broker.restart()
        elif args.command == "stop":
            broker.stop()
        elif args.command == "kill":
            broker.kill()
    except KafkaLocalError as exc:
        print(f"kafka_local: error: {exc}", file=sys.stderr)
        return 1
    status = broker.status()
    print(json.dumps(status.as_dict()) if args.json else status.line())
    if args.command == "status" and status.state != "running":
        return STATUS_STOPPED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
