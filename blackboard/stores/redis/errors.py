"""Redis errors become ours at the store boundary, keeping Redis' error code.

The code is the first word of Redis' error reply (``OOM``, ``NOGROUP``, ``LOADING``, …), or
``CONNECTION`` / ``TIMEOUT`` when the server could not be reached.
"""

from __future__ import annotations

from redis.exceptions import (
    BusyLoadingError,
    ConnectionError,
    OutOfMemoryError,
    RedisError,
    ResponseError,
    TimeoutError,
)

from blackboard.errors import CommitError, StoreError, StoreUnavailableError

OOM_HINT = (
    "Redis is out of memory (maxmemory reached, policy noeviction): nothing of this call was "
    "applied. Trim streams (trim_interval_s, RedisStore.trim), remove unused consumer groups, "
    "or raise maxmemory"
)


def error_code(exc: BaseException) -> str:
    """Redis' error code for ``exc``."""
    if isinstance(exc, BusyLoadingError):
        return "LOADING"
    if isinstance(exc, TimeoutError):
        return "TIMEOUT"
    if isinstance(exc, ConnectionError):
        return "CONNECTION"
    if isinstance(exc, OutOfMemoryError):
        return "OOM"
    text = str(exc).strip()
    word = text.split(" ", 1)[0] if text else ""
    return word if word.isupper() else "ERR"


def unavailable(exc: BaseException) -> bool:
    """The server could not be reached or is still loading (calling again may work)."""
    return isinstance(exc, ConnectionError | TimeoutError)  # BusyLoadingError included


def translate(exc: RedisError, action: str, *, in_commit: bool = False) -> StoreError:
    """Our error for a Redis failure during ``action`` (to raise ``from exc``).

    In a commit every failure is a :class:`CommitError`: MULTI/EXEC applies all or nothing,
    so nothing of the commit is visible (when the connection broke before the reply, the
    committed offsets say whether it happened).
    """
    code = error_code(exc)
    if code == "OOM":
        message = f"{action} failed: {OOM_HINT}"
        if in_commit:
            return CommitError(message, code=code, retriable=True)
        return StoreError(message, code=code, retriable=True)
    message = f"{action} failed: {code}: {exc}"
    if unavailable(exc):
        if in_commit:
            return CommitError(message, code=code, retriable=True)
        return StoreUnavailableError(message, code=code, retriable=True)
    if in_commit:
        return CommitError(message, code=code)
    retriable = isinstance(exc, ResponseError) and code in ("BUSY", "TRYAGAIN")
    return StoreError(message, code=code, retriable=retriable)
