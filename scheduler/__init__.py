"""Admission control: which admitted record runs next (ready-queue policies), rate limits, and
a simulator to compare policies under a virtual clock (see the admission issue).

- :func:`make_queue` builds a runner's ready queue from a policy name or :class:`PolicySpec`:
  ``fifo``, ``srpt``, ``plas``, ``join_aware``, ``drr`` / ``drr+<policy>``.
- :class:`Ledger` holds the service statistics the policies of one worker share.
- :class:`RateLimit` holds token buckets (requests/s, tokens/s) checked before a handler starts,
  per runner in memory or shared by an agent's workers in Redis.
- :class:`RetryBudget` caps the share of calls that are retries per artifact type and tenant;
  retries beyond it are deferred.
- :class:`BatchControl` is one type's batch size and window; :class:`BatchSettings` holds
  operators' overrides of them (:mod:`scheduler.batching`).
"""

from __future__ import annotations

from scheduler.base import Admission, Decision, ReadyQueue
from scheduler.batching import BatchControl, BatchSettings, Release
from scheduler.ledger import Estimator, Ledger, mean_estimator
from scheduler.policies import BASE_POLICIES, PolicyLike, PolicySpec, as_spec, make_queue
from scheduler.ratelimit import RateLimit, RateLimiter, TokenBucket
from scheduler.retrybudget import Deferral, RetryBudget, RetryBudgets

__all__ = [
    "BASE_POLICIES",
    "Admission",
    "BatchControl",
    "BatchSettings",
    "Decision",
    "Deferral",
    "Estimator",
    "Ledger",
    "PolicyLike",
    "PolicySpec",
    "RateLimit",
    "RateLimiter",
    "ReadyQueue",
    "Release",
    "RetryBudget",
    "RetryBudgets",
    "TokenBucket",
    "as_spec",
    "make_queue",
    "mean_estimator",
]
