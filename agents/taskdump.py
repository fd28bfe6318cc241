"""What every asyncio task of a worker is waiting on, for ``kill -USR2 <pid>``.

A worker that does not stop is stuck in an ``await`` somewhere; thread stacks
(``faulthandler``, SIGUSR1) show only the event loop's ``select``. This logs each task with the
chain of frames it is suspended in.
"""

from __future__ import annotations

import asyncio
import io

from blackboard.logs import get_logger

log = get_logger("worker")


def task_stacks() -> list[dict[str, str]]:
    """Every task of the running loop: its name and the frames it waits in, innermost last."""
    out = []
    for task in sorted(asyncio.all_tasks(), key=lambda t: t.get_name()):
        buf = io.StringIO()
        task.print_stack(file=buf)
        out.append({"task": task.get_name(), "stack": buf.getvalue()})
    return out


def log_task_stacks() -> None:
    """Log :func:`task_stacks` as one ``tasks dumped`` event (call on the worker's loop)."""
    log.warning("tasks dumped", tasks=task_stacks())
