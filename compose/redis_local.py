"""Run a private ``redis-server`` on 127.0.0.1, without Docker and without the system service.

Command line (stdlib only)::

    python compose/redis_local.py start [--port 0] [--appendonly]  # 0 = a free port
    python compose/redis_local.py status [--json]                  # exit 0 running, 3 stopped
    python compose/redis_local.py kill                             # SIGKILL (fault tests)
    python compose/redis_local.py restart                          # same dir, port and AOF
    python compose/redis_local.py stop                             # SIGTERM, wait

Python API, as used by the pytest fixtures in ``tests/services.py``::

    server = RedisLocal(appendonly=True)   # free loopback port, temporary data dir
    server.start()
    server.url                             # "redis://127.0.0.1:PORT/0"
    server.kill(); server.restart()        # AOF data written before the kill survives
    server.stop(); server.cleanup()

``redis-server`` comes from the Debian package ``redis-server``; its system service is not
used. A data dir holds ``redis.conf``, ``redis-local.json`` (port, appendonly),
``redis.pid``, ``redis.log``, and Redis' own ``dump.rdb`` / ``appendonlydir/``.

Only the process recorded in ``redis.pid`` is ever signalled, and only after checking that it
still is a ``redis-server`` whose working directory is this data dir (PIDs get reused).
Every failure raises :class:`RedisLocalError` with a one-line message; the command line
prints it and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
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
else:  # run as a script: python compose/redis_local.py
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


STATUS_STOPPED_EXIT = 3  # LSB "program is not running"

_PID_FILE = "redis.pid"
_STATE_FILE = "redis-local.json"
_LOG_FILE = "redis.log"
_CONF_FILE = "redis.conf"


class RedisLocalError(Exception):
    """A local redis-server could not be started, signalled or reached."""


def ping(port: int, timeout: float = 0.5) -> bool:
    """Send a raw RESP ``PING`` to 127.0.0.1:port; True on ``+PONG`` (False while loading)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _is_redis_in(pid: int, data_dir: Path) -> bool:
    """Tell whether ``pid`` is a live redis-server working in ``data_dir``.

    Redis rewrites its process title (the config path disappears from it), so the
    working directory, which Redis sets to its ``dir``, identifies the instance.
    """
    proc = Path("/proc") / str(pid)
    if Path("/proc/self").exists():
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            return False
        return "redis-server" in title and cwd == data_dir
    # No /proc (macOS): the title check is all ps offers.
    res = subprocess.run(
        ["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    out = res.stdout.strip()
    return res.returncode == 0 and not out.startswith("Z") and "redis-server" in out


@dataclass(frozen=True)
class RedisStatus:
    """A snapshot of one local redis-server, as printed by ``status``."""

    state: Literal["running", "stopped"]
    pid: int | None
    url: str | None
    port: int | None
    appendonly: bool
    data_dir: str
    log_file: str

    def as_dict(self) -> dict[str, object]:
        """Return the fields as a JSON-ready dict."""
        return asdict(self)

    def line(self) -> str:
        """Return a one-line human summary."""
        if self.state == "running":
            return (
                f"running pid={self.pid} url={self.url} appendonly={self.appendonly} "
                f"data_dir={self.data_dir} log={self.log_file}"
            )
        return f"stopped data_dir={self.data_dir}"


class RedisLocal(LocalServer):
    """One redis-server on 127.0.0.1 with its own data dir.

    Args:
        port: port to listen on; 0 picks a free port (or the one recorded in the data dir).
        data_dir: directory of this server; None creates a temporary one that
            :meth:`cleanup` removes.
        appendonly: enable the append-only file, so data survives :meth:`kill`.
            None keeps the recorded choice (False for a new dir).
        start_timeout: seconds :meth:`start` waits for ``PING`` to answer.
        extra_config: ``redis.conf`` directives added after the defaults.
        die_with_parent: Linux only: the server gets SIGTERM when the process that started
            it dies (pytest fixtures use this so a killed test run leaks no server).
    """

    pid_file = _PID_FILE

    def __init__(
        self,
        *,
        port: int = 0,
        data_dir: str | Path | None = None,
        appendonly: bool | None = None,
        start_timeout: float = 20.0,
        extra_config: dict[str, str] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self._owns_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="redis-local-")).resolve()
            if data_dir is None
            else Path(data_dir).expanduser().resolve()
        )
        state = self._read_state()
        self.port = port or as_int(state.get("port"))
        self.appendonly = bool(state.get("appendonly")) if appendonly is None else appendonly
        self.start_timeout = start_timeout
        self.extra_config = dict(extra_config or {})
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        """Redis' log file."""
        return self.data_dir / _LOG_FILE

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``.

        Raises:
            RedisLocalError: no port has been chosen yet (never started).
        """
        if not self.port:
            raise RedisLocalError(f"redis in {self.data_dir} has no port yet: start it first")
        return f"redis://{HOST}:{self.port}/0"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Write the config, launch redis-server and wait until it answers ``PING``.

        Does nothing if this data dir's server already runs.

        Raises:
            RedisLocalError: redis-server missing, the port busy, or the server exited or
                did not answer within ``start_timeout`` (message ends with its log tail).
        """
        if self.pid() is not None:
            return
        binary = shutil.which("redis-server")
        if not binary:
            raise RedisLocalError(
                "redis-server not found: install the Debian package (apt-get install "
                "redis-server) or set REDIS_URL"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        if not port_is_free(self.port):
            raise RedisLocalError(f"port {HOST}:{self.port} is busy: pick another with --port")
        self._write_config()
        with self.log_file.open("ab") as out:  # early errors go to stdout before logfile opens
            self._proc = subprocess.Popen(
                [binary, str(self.data_dir / _CONF_FILE)],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own session and process group: survives our exit
                preexec_fn=parent_death_signal if self.die_with_parent else None,
            )
        (self.data_dir / _PID_FILE).write_text(f"{self._proc.pid}\n")
        try:
            self._wait_ready()
        except BaseException:
            self.kill()  # never leave a half-started server behind
            raise

    def restart(self) -> None:
        """Stop the server if it runs, then start it on the same data dir, port and AOF choice.

        Raises:
            RedisLocalError: as :meth:`start`; also if the data dir was never started.
        """
        if not self.port or not (self.data_dir / _CONF_FILE).is_file():
            raise RedisLocalError(f"nothing to restart in {self.data_dir}: start it first")
        self.stop()
        self.start()

    # -- inspection --------------------------------------------------------------------

    def status(self) -> RedisStatus:
        """Return a :class:`RedisStatus` snapshot."""
        pid = self.pid()
        return RedisStatus(
            state="running" if pid is not None else "stopped",
            pid=pid,
            url=self.url if pid is not None and self.port else None,
            port=self.port or None,
            appendonly=self.appendonly,
            data_dir=str(self.data_dir),
            log_file=str(self.log_file),
        )

    # -- internals ---------------------------------------------------------------------

    def _read_state(self) -> dict[str, object]:
        try:
            data = json.loads((self.data_dir / _STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _is_ours(self, pid: int) -> bool:
        return _is_redis_in(pid, self.data_dir)

    def _write_config(self) -> None:
        state = {"port": self.port, "appendonly": self.appendonly}
        (self.data_dir / _STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        conf = {
            "bind": HOST,
            "port": str(self.port),
            "protected-mode": "yes",
            "daemonize": "no",  # we detach it ourselves and keep the real PID
            "dir": f'"{self.data_dir}"',
            "logfile": f'"{self.log_file}"',
            "appendonly": "yes" if self.appendonly else "no",
            # AOF is written to the OS before replies go out, so it survives a SIGKILL of
            # the server; fsync every second only matters if the machine itself dies.
            "appendfsync": "everysec",
        }
        conf.update(self.extra_config)
        (self.data_dir / _CONF_FILE).write_text("".join(f"{k} {v}\n" for k, v in conf.items()))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise RedisLocalError(
                    f"redis-server exited with code {code} during startup; last log lines:\n"
                    f"{tail(self.log_file, 20)}"
                )
            if ping(self.port):
                return
            if time.monotonic() > deadline:
                raise RedisLocalError(
                    f"redis-server not answering on {HOST}:{self.port} after "
                    f"{self.start_timeout:.0f}s; last log lines:\n{tail(self.log_file, 20)}"
                )
            time.sleep(0.05)


# -- command line ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redis_local.py", description=f"Run a private redis-server on {HOST}."
    )
    parser.add_argument("command", choices=("start", "stop", "status", "kill", "restart"))
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="port (default: recorded in the data dir, else a free port)",
    )
    parser.add_argument(
        "--data-dir", default=None, help="server directory (default: <cache>/redis-local)"
    )
    parser.add_argument(
        "--appendonly",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="enable the append-only file (default: recorded in the data dir, else off)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (status: 0 running, 3 stopped)."""
    args = _parser().parse_args(argv)
    data_dir = Path(args.data_dir) if args.data_dir else cache_root() / "redis-local"
    server = RedisLocal(data_dir=data_dir, port=args.port or 0, appendonly=args.appendonly)
    try:
        if args.command == "restart":
            recorded = RedisLocal(data_dir=data_dir)
            if (args.port and args.port != recorded.port) or (
                args.appendonly is not None and args.appendonly != recorded.appendonly
            ):
                raise RedisLocalError(
                    f"restart keeps the recorded port {recorded.port} and "
                    f"appendonly={recorded.appendonly}"
                )
            server.restart()
        elif args.command == "start":
            server.start()
        elif args.command == "stop":
            server.stop()
        elif args.command == "kill":
            server.kill()
    except RedisLocalError as exc:
        print(f"redis_local: error: {exc}", file=sys.stderr)
        return 1
    status = server.status()
    print(json.dumps(status.as_dict()) if args.json else status.line())
    if args.command == "status" and status.state != "running":
        return STATUS_STOPPED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
