"""Process handling shared by the local Kafka and Redis launchers (standard library only).

A :class:`LocalServer` runs one server process out of its own data dir, records its PID there,
and only ever signals that PID after checking it still is its server (PIDs get reused).
"""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

HOST = "127.0.0.1"


def cache_root() -> Path:
    """Return the cache directory: ``$KAFKA_BLACKBOARD_CACHE`` or ``~/.cache/kafka-blackboard``."""
    env = os.environ.get("KAFKA_BLACKBOARD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kafka-blackboard"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Tell whether ``port`` on 127.0.0.1 can be bound (SO_REUSEADDR, as the servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def as_int(value: object) -> int:
    """``value`` if it is an int (read from a state file), else 0."""
    return value if isinstance(value, int) else 0


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file ("" if unreadable)."""
    try:
        data = path.read_bytes()[-64 * 1024 :]
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def send_signal(pid: int, sig: signal.Signals) -> None:
    """Signal ``pid``; a process that exited meanwhile is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def parent_death_signal() -> None:
    """In the child before exec: ask Linux to SIGTERM us when the parent dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: no such guard


class LocalServer(abc.ABC):
    """A server process of ours: started by :meth:`start`, found again through its PID file.

    Subclasses set :attr:`pid_file`, ``data_dir``, ``port``, ``_proc`` and ``_owns_dir``, and
    implement :meth:`start` and :meth:`_is_ours`.
    """

    pid_file: ClassVar[str]
    data_dir: Path
    port: int
    _proc: subprocess.Popen[bytes] | None
    _owns_dir: bool

    @abc.abstractmethod
    def start(self) -> None:
        """Start the server and wait until it answers."""

    @abc.abstractmethod
    def _is_ours(self, pid: int) -> bool:
        """Whether ``pid`` is a live process of this data dir's server."""

    def pid(self) -> int | None:
        """Return the PID of this data dir's running server, or None."""
        if self._proc is not None:
            if self._proc.poll() is None:
                return self._proc.pid
            self._proc = None  # exited and now reaped
        try:
            pid = int((self.data_dir / self.pid_file).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_ours(pid) else None

    def is_running(self) -> bool:
        """Tell whether this data dir's server process is alive."""
        return self.pid() is not None

    def stop(self, timeout: float = 30.0) -> bool:
        """Send SIGTERM and wait; SIGKILL if the server outlives ``timeout``.

        Returns:
            True if a server was running.
        """
        pid = self.pid()
        if pid is None:
            self._forget()
            return False
        send_signal(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout):
            send_signal(pid, signal.SIGKILL)
            self._wait_gone(pid, 10.0)
        self._forget()
        return True

    def kill(self) -> bool:
        """Send SIGKILL to the recorded server (a crash, for fault tests) and wait until gone.

        Returns:
            True if a server was running.
        """
        pid = self.pid()
        if pid is None:
            self._forget()
            return False
        send_signal(pid, signal.SIGKILL)
        self._wait_gone(pid, 10.0)
        self._forget()
        return True

    def cleanup(self) -> None:
        """Stop the server and remove the data dir if this object created it."""
        import shutil

        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.pid == pid:
                try:
                    self._proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    return False
                return True
            if not self._is_ours(pid):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def _forget(self) -> None:
        self._proc = None
        (self.data_dir / self.pid_file).unlink(missing_ok=True)
