"""Service statistics the policies of one worker share: a running mean of service time per
agent, the service each correlation id has attained, and how much of each correlation id is
queued or running. Runners of one worker share one ledger, so ``plas`` sees the service a job
got in earlier steps and ``join_aware`` sees the siblings a job still has in flight."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from scheduler.base import Admission

#: Remaining work (seconds) of an admitted record's correlation id, or None if unknown.
Estimator: TypeAlias = "Callable[[Admission, Ledger], float | None]"


@dataclass(slots=True)
class _Mean:
    count: int = 0
    mean: float = 0.0


class Ledger:
    """Shared service statistics (one per worker; not thread-safe: one event loop).

    Args:
        prior_s: the service time assumed for an agent before any call finished.
        max_jobs: how many correlation ids' attained service is remembered (oldest forgotten).
    """

    def __init__(self, prior_s: float = 1.0, max_jobs: int = 100_000) -> None:
        self.prior_s = prior_s
        self._means: dict[str, _Mean] = {}
        self._attained: OrderedDict[str, float] = OrderedDict()
        self._outstanding: dict[str, int] = {}
        self._outstanding_work: dict[str, float] = {}
        self._max_jobs = max_jobs

    # -- what the queues and the runner report ----------------------------------------------
    def queued(self, info: Admission, work_s: float | None = None) -> None:
        """A record of ``info.correlation_id`` entered a ready queue."""
        corr = info.correlation_id
        self._outstanding[corr] = self._outstanding.get(corr, 0) + 1
        work = self.mean_service(info.agent) if work_s is None else work_s
        self._outstanding_work[corr] = self._outstanding_work.get(corr, 0.0) + work

    def dequeued(self, info: Admission, work_s: float | None = None) -> None:
        """A record of ``info.correlation_id`` left for good (finished, dropped, skipped)."""
        corr = info.correlation_id
        left = self._outstanding.get(corr, 0) - 1
        if left <= 0:
            self._outstanding.pop(corr, None)
            self._outstanding_work.pop(corr, None)
            return
        self._outstanding[corr] = left
        work = self.mean_service(info.agent) if work_s is None else work_s
        self._outstanding_work[corr] = max(0.0, self._outstanding_work.get(corr, 0.0) - work)

    def observe(self, info: Admission, service_s: float) -> None:
        """A handler call of ``info`` took ``service_s`` seconds."""
        mean = self._means.setdefault(info.agent, _Mean())
        mean.count += 1
        mean.mean += (service_s - mean.mean) / mean.count
        attained = self._attained
        corr = info.correlation_id
        attained[corr] = attained.get(corr, 0.0) + service_s
        attained.move_to_end(corr)
        if len(attained) > self._max_jobs:
            attained.popitem(last=False)

    # -- what the policies read -------------------------------------------------------------
    def mean_service(self, agent: str) -> float:
        """The running mean of ``agent``'s service time (``prior_s`` before the first call)."""
        mean = self._means.get(agent)
        return mean.mean if mean is not None and mean.count else self.prior_s

    def attained(self, correlation_id: str) -> float:
        """Service the correlation id got so far in this worker (seconds)."""
        return self._attained.get(correlation_id, 0.0)

    def outstanding(self, correlation_id: str) -> int:
        """Records of the correlation id queued or running in this worker."""
        return self._outstanding.get(correlation_id, 0)

    def outstanding_work(self, correlation_id: str) -> float:
        """Estimated work (seconds) of the correlation id's queued and running records."""
        return self._outstanding_work.get(correlation_id, 0.0)


def mean_estimator(info: Admission, ledger: Ledger) -> float:
    """The default estimator: the agent's running mean of service time."""
    return ledger.mean_service(info.agent)


class NullLedger(Ledger):
    """A ledger that records nothing: for a worker whose agents all run ``fifo`` (no policy
    reads the statistics, so keeping them would only cost time per record)."""

    def queued(self, info: Admission, work_s: float | None = None) -> None:
        """Nothing to note."""

    def dequeued(self, info: Admission, work_s: float | None = None) -> None:
        """Nothing to note."""

    def observe(self, info: Admission, service_s: float) -> None:
        """Nothing to note."""
