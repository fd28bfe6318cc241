"""A worker process: runs the agents of an :class:`~agents.agent.App` until told to stop.

Each agent is one member of its consumer group (``<prefix>.<agent>``); start more workers and the
partitions spread across them. SIGTERM or SIGINT stops polling, gives in-flight handlers a
grace period, commits what finished and leaves the groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import importlib
import inspect
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Unpack

from agents.agent import AgentSpec, App
from agents.clock import SYSTEM_CLOCK, Clock
from agents.llm.client import LLMRuntime
from agents.options import WorkerKeywords, WorkerOptions
from agents.runner import AgentRunner
from agents.settings import RunnerSettings
from agents.taskdump import log_task_stacks
from blackboard.blackboard import Blackboard
from blackboard.errors import AppLoadError, ConfigError
from blackboard.logs import get_logger
from blackboard.redact import redact_url
from scheduler.batching import BatchSettings, resolve
from scheduler.ledger import Ledger, NullLedger
from scheduler.policies import as_spec
from scheduler.retrybudget import RetryBudget

log = get_logger("worker")


def load_app(ref: str) -> App:
    """Import ``module:attribute`` (or ``path/to/file.py:attribute``) and return the App.

    Raises:
        AppLoadError: the reference is malformed, the module does not import, or the
            attribute is missing or not an App.
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(f"app reference {ref!r} must look like module:app")
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        sys.path.insert(0, str(path.parent))
        module_name = path.stem
    elif "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise AppLoadError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    app = getattr(module, attr, None)
    if app is None:
        raise AppLoadError(f"module {module_name!r} has no attribute {attr!r}")
    if not isinstance(app, App):
        raise AppLoadError(f"{ref} is a {type(app).__name__}, not an agents.App")
    return app


class Worker:
    """Runs some or all agents of ``app`` on ``board``.

    Args:
        app: the agents.
        board: where they read and write.
        settings: polling and commit settings for every runner.
        options: which agents, the slot, default policy and retry budget, batch overrides
            (:class:`agents.options.WorkerOptions`), or the same names as keywords on top.
        clock: the wall clock of join timeouts and batch windows (tests pass a
            :class:`agents.clock.ManualClock`).

    Raises:
        ConfigError: an unknown agent, or a batch override that is malformed or names a type
            no batch agent of the app consumes.
    """

    def __init__(
        self,
        app: App,
        board: Blackboard,
        settings: RunnerSettings | None = None,
        *,
        options: WorkerOptions | None = None,
        clock: Clock = SYSTEM_CLOCK,
        **given: Unpack[WorkerKeywords],
    ) -> None:
        self.options = opts = WorkerOptions.of(options, **given)
        names = list(opts.agents) if opts.agents else list(app.agents)
        unknown = [n for n in names if n not in app.agents]
        if unknown:
            raise ConfigError(
                f"unknown agent(s) {', '.join(unknown)}; the app has {', '.join(app.agents)}"
            )
        if not names:
            raise ConfigError(f"app {app.name!r} has no agents")
        if board.registry is not app.registry:
            board.registry.merge(app.registry)
        self.app = app
        self.board = board
        batch = opts.batch if opts.batch is not None else BatchSettings.from_env()
        agent_specs = _with_batch_overrides(app, batch)
        default = as_spec(opts.policy)
        specs = [as_spec(app.agents[n].policy or default) for n in names]
        # Service statistics feed the other policies; an all-fifo worker does without them.
        self.ledger = Ledger() if any(s.parts != (False, "fifo") for s in specs) else NullLedger()
        self.llm = LLMRuntime(opts.llm, opts.models)
        self.runners = [
            AgentRunner(
                board,
                _with_budget(agent_specs[n], opts.retry_budget),
                settings,
                slot=opts.slot,
                clock=clock,
                policy=default,
                ledger=self.ledger,
                llm=self.llm,
            )
            for n in names
        ]
        self._gc_gen0 = opts.gc_gen0_threshold

    async def run(self, *, handle_signals: bool = False) -> None:
        """Run every runner until :meth:`stop` (or SIGTERM/SIGINT when ``handle_signals``;
        SIGUSR2 then logs what each asyncio task waits on).

        If one runner fails, the others are stopped and the error is raised. The app's
        lifespan is entered first (its resources reach handlers as ``ctx.resources``) and
        left after every runner stopped.
        """
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
            loop.add_signal_handler(signal.SIGUSR2, log_task_stacks)
        started = time.monotonic()
        gc_before = gc.get_threshold()
        try:
            async with _lifespan(self.app) as given:
                for runner in self.runners:
                    runner.resources = given
                await self._run(started, gc_before)
        finally:
            await self.llm.aclose()
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
                    loop.remove_signal_handler(sig)

    async def _run(self, started: float, gc_before: tuple[int, ...]) -> None:
        if self._gc_gen0 is not None:
            gc.set_threshold(max(self._gc_gen0, gc_before[0]), *gc_before[1:])
        tasks = [asyncio.create_task(r.run(), name=f"agent:{r.spec.name}") for r in self.runners]
        log.info(
            "worker started",
            app=self.app.name,
            agents=[r.spec.name for r in self.runners],
            store=redact_url(self.board.store.url),
        )
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in done if not t.cancelled() and t.exception() is not None]
            if failed:
                self.stop()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise failed[0].exception()  # type: ignore[misc]
        finally:
            alive = [t for t in tasks if not t.done()]
            for task in alive:
                task.cancel()  # run() itself was cancelled: stop like a killed process
            if alive:
                await asyncio.gather(*alive, return_exceptions=True)
            gc.set_threshold(*gc_before)
            log.info("worker stopped", seconds=round(time.monotonic() - started, 3))

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("signal received, stopping", signal=sig.name)
        self.stop()

    def stop(self) -> None:
        """Ask every runner to stop (call from the worker's event loop)."""
        for runner in self.runners:
            runner.stop()

    async def started(self) -> None:
        """Wait until every runner has joined its group."""
        await asyncio.gather(*(r.started() for r in self.runners))

    @property
    def idle(self) -> bool:
        """No runner holds read-but-uncommitted work."""
        return all(r.idle for r in self.runners)


def _lifespan(app: App) -> contextlib.AbstractAsyncContextManager[Mapping[str, Any]]:
    """The app's lifespan as an async context manager (an async generator function is
    wrapped; no lifespan yields no resources).

    Raises:
        ConfigError: a lifespan that is neither.
    """
    if app.lifespan is None:
        return contextlib.nullcontext({})
    fn = app.lifespan
    if inspect.isasyncgenfunction(fn):
        fn = contextlib.asynccontextmanager(fn)
    made = fn(app)
    if not isinstance(made, contextlib.AbstractAsyncContextManager):
        raise ConfigError(
            f"app {app.name!r}: lifespan must be an async context manager or an async "
            f"generator function of the app, got {type(made).__name__}"
        )
    return _resources(made)


@contextlib.asynccontextmanager
async def _resources(
    made: contextlib.AbstractAsyncContextManager[Any],
) -> AsyncIterator[Mapping[str, Any]]:
    async with made as given:
        if given is None:
            given = {}
        if not isinstance(given, Mapping):
            raise ConfigError(f"a lifespan must yield a mapping, got {type(given).__name__}")
        yield given


def _with_batch_overrides(app: App, settings: BatchSettings) -> dict[str, AgentSpec]:
    """The app's agents, batch agents with the operator's sizes and windows.

    Raises:
        ConfigError: an override names a type (or agent) no batch agent of the app has.
    """
    specs = dict(app.agents)
    if not settings.batch:
        return specs
    batched = {
        name: {t.name: t.model.__name__ for t in spec.consumes}
        for name, spec in specs.items()
        if spec.collector is not None and spec.collector.kind == "batch"
    }
    for name, overrides in resolve(settings.batch, batched).items():
        spec = specs[name]
        assert spec.collector is not None
        collector = spec.collector.overridden(overrides)
        specs[name] = dataclasses.replace(spec, collector=collector)
        log.info(
            "batch controls overridden",
            agent=name,
            controls={t: str(collector.controls[t]) for t in overrides},
        )
    return specs


def _with_budget(spec: AgentSpec, budget: RetryBudget | None) -> AgentSpec:
    """``spec``, with the worker's retry budget if it sets none of its own."""
    if budget is None or spec.retry_budget is not None:
        return spec
    return dataclasses.replace(spec, retry_budget=budget)
