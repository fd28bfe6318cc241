"""Retry policy, circuit breaker and DLQ helpers, with injected clocks and seeds."""

from __future__ import annotations

import random

import pytest

from agents.breaker import BreakerPolicy, CircuitBreaker
from agents.retry import RetryPolicy
from blackboard.deadletters import parse_since
from blackboard.errors import AgentError, ConfigError, UndeclaredOutputError


def test_backoff_doubles_up_to_the_cap_and_full_jitter_stays_below_it() -> None:
    exact = RetryPolicy(backoff_ms=100, max_backoff_ms=1000, jitter="none")
    assert [exact.backoff_s(a) for a in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    jittered = RetryPolicy(backoff_ms=100, max_backoff_ms=1000)
    rng = random.Random(3)
    waits = [jittered.backoff_s(4, rng) for _ in range(200)]
    assert all(0 <= w <= 0.8 for w in waits) and max(waits) > 0.6 and min(waits) < 0.2


def test_retryable_errors_follow_the_lists() -> None:
    policy = RetryPolicy(retry_on=(OSError,), no_retry_on=(FileNotFoundError,))
    assert policy.retryable(ConnectionError())
    assert not policy.retryable(FileNotFoundError())
    assert not policy.retryable(ValueError())
    assert not RetryPolicy().retryable(UndeclaredOutputError("bug"))


@pytest.mark.parametrize(
    "options",
    [{"max_attempts": 0}, {"backoff_ms": 10, "max_backoff_ms": 5}, {"jitter": "some"}],
)
def test_bad_retry_settings_are_agent_errors(options: dict[str, object]) -> None:
    with pytest.raises(AgentError):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_breaker_opens_half_opens_for_one_trial_and_backs_off() -> None:
    now = [0.0]
    changes: list[str] = []
    breaker = CircuitBreaker(
        BreakerPolicy(failures=3, cooldown_s=10, max_cooldown_s=25),
        on_change=lambda state, _: changes.append(state),
        clock=lambda: now[0],
    )
    for _ in range(2):
        breaker.failed()
    breaker.succeeded()  # a success in between resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state == "open" and not breaker.allow() and breaker.wait_s() == 10
    now[0] = 10.0
    assert breaker.allow() and breaker.state == "half_open"
    assert not breaker.allow()  # one trial at a time
    breaker.failed()
    assert breaker.state == "open" and breaker.cooldown_s == 20
    now[0] = 30.0
    assert breaker.allow()
    breaker.failed()
    assert breaker.cooldown_s == 25  # capped
    now[0] = 55.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.cooldown_s == 10 and breaker.allow()
    assert changes == ["open", "half_open", "open", "half_open", "open", "half_open", "closed"]
    assert breaker.opens == 3


def test_since_takes_durations_and_iso_times() -> None:
    assert parse_since("90s", now=1000.0) == 910.0
    assert parse_since("2h", now=10_000.0) == 2800.0
    assert parse_since("2026-01-01T00:00:00") == parse_since("2026-01-01T00:00:00+00:00")
    with pytest.raises(ConfigError, match="--since 'yesterday'"):
        parse_since("yesterday")
