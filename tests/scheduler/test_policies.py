"""The ready-queue policies order records as specified (no runner, no store)."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from blackboard.errors import ConfigError
from scheduler import Admission, Ledger, PolicySpec, RateLimit, TokenBucket, make_queue
from scheduler.joins import completes_join


def adm(corr: str, tenant: str = "default", work: float = 1.0, joins: bool = False) -> Admission:
    return Admission("a", corr, tenant, "t.T", {"work": work}, joins)


def by_work(info: Admission, ledger: Ledger) -> float:
    return float(info.payload["work"])


def drain(queue: object, now: float = 0.0) -> list[str]:
    out = []
    while queue:  # type: ignore[truthy-bool]
        item, _ = queue.pop(now)  # type: ignore[attr-defined]
        out.append(item)
    return out


def test_fifo_keeps_arrival_order_and_says_admitted() -> None:
    q = make_queue("fifo", "a", Ledger())
    for name in "abc":
        q.push(name, adm(name), 0.0)
    item, decision = q.pop(0.0)
    assert item == "a" and decision.verdict == "admitted" and decision.position == 0
    assert drain(q) == ["b", "c"]


def test_srpt_runs_the_shortest_estimate_first_and_records_who_was_deferred() -> None:
    q = make_queue(PolicySpec("srpt", estimator=by_work), "a", Ledger())
    for name, work in [("long", 9.0), ("mid", 3.0), ("short", 1.0), ("tie", 3.0)]:
        q.push(name, adm(name, work=work), 0.0)
    first, d1 = q.pop(0.0)
    assert first == "short" and d1.estimate_s == 1.0 and d1.why == "shortest-remaining"
    assert d1.position == 2 and d1.verdict == "admitted"  # it overtook, nobody overtook it
    rest = [q.pop(0.0) for _ in range(3)]
    assert [r[0] for r in rest] == ["mid", "tie", "long"]  # ties in arrival order
    long_decision = rest[-1][1]
    assert long_decision.verdict == "deferred" and long_decision.overtaken == 3
    assert "deferred srpt" in str(long_decision) and "est=9s" in str(long_decision)


def test_srpt_defaults_to_the_agents_running_mean() -> None:
    ledger = Ledger(prior_s=2.0)
    q = make_queue("srpt", "a", ledger)
    q.push("x", adm("x"), 0.0)
    _, decision = q.pop(0.0)
    assert decision.estimate_s == 2.0
    q.finished(adm("x"), decision, 4.0)
    ledger.observe(adm("y"), 6.0)
    assert ledger.mean_service("a") == 5.0


def test_plas_prefers_least_attained_service_but_ages_old_work() -> None:
    ledger = Ledger()
    ledger.observe(adm("old"), 10.0)  # the job "old" already got 10 s of service
    q = make_queue(PolicySpec("plas", aging=0.5), "a", ledger)
    q.push("old", adm("old"), 0.0)
    q.push("new", adm("new"), 1.0)
    assert drain(q, 2.0) == ["new", "old"]  # 0 + 0.5*1 < 10 + 0
    # Waiting long enough beats any attained service: 10 + 0.5*0 < 0 + 0.5*25.
    q.push("old", adm("old"), 0.0)
    q.push("newer", adm("newer"), 25.0)
    assert drain(q, 26.0) == ["old", "newer"]


def test_plas_without_aging_is_least_attained_first() -> None:
    ledger = Ledger()
    for corr, s in [("a", 3.0), ("b", 1.0), ("c", 2.0)]:
        ledger.observe(adm(corr), s)
    q = make_queue(PolicySpec("plas", aging=0.0), "a", ledger)
    for corr in "abc":
        q.push(corr, adm(corr), float(ord(corr)))
    assert drain(q) == ["b", "c", "a"]


def test_join_aware_runs_join_completions_then_the_job_with_least_remaining_work() -> None:
    ledger = Ledger()
    q = make_queue(PolicySpec("join_aware", estimator=by_work), "a", ledger)
    # Job A has three parts queued (9 s left), job B one part of 2 s, and a part that
    # completes a join.
    for i in range(3):
        q.push(f"A{i}", adm("A", work=3.0), 0.0)
    q.push("B0", adm("B", work=2.0), 0.0)
    q.push("J", adm("J", work=5.0, joins=True), 0.0)
    first, decision = q.pop(0.0)
    assert first == "J" and decision.why == "completes-join"
    assert drain(q) == ["B0", "A0", "A1", "A2"]


def test_join_aware_finishes_a_started_job_before_a_new_one() -> None:
    ledger = Ledger()
    q = make_queue(PolicySpec("join_aware", estimator=by_work), "a", ledger)
    q.push("A0", adm("A", work=1.0), 0.0)
    q.push("A1", adm("A", work=4.0), 0.0)
    q.push("B0", adm("B", work=2.0), 0.0)
    q.push("B1", adm("B", work=2.0), 0.0)
    item, decision = q.pop(0.0)
    assert item == "B0"  # B has 4 s left, A 5 s
    q.finished(adm("B", work=2.0), decision, 2.0)
    # B now has 2 s left: its last part goes before A's, whose key was 1 s at push time.
    assert drain(q) == ["B1", "A0", "A1"]


def test_completes_join_reads_the_held_parts() -> None:
    wanted = {"Idea": 1, "Review": 2}
    held = {"since": 0, "parts": [{"type": "Idea"}, {"type": "Review"}]}
    state = {"bb.join:k": orjson.dumps(held)}
    assert completes_join(wanted, state, "k", "Review")
    assert not completes_join(wanted, state, "other", "Review")
    assert not completes_join(wanted, {}, "k", "Idea")


def test_drr_shares_follow_the_weights_while_tenants_are_backlogged() -> None:
    q = make_queue(PolicySpec("drr", weights={"gold": 3.0}), "a", Ledger())
    for i in range(300):
        for tenant in ("gold", "silver", "bronze"):
            q.push(f"{tenant}{i}", adm(f"{tenant}{i}", tenant), 0.0)
    first = Counter()
    for _ in range(500):
        item, decision = q.pop(0.0)
        first[item.rstrip("0123456789")] += 1
        assert decision.policy == "drr+fifo"
    assert abs(first["gold"] / 500 - 0.6) <= 0.01
    assert abs(first["silver"] / 500 - 0.2) <= 0.01


def test_drr_isolates_a_burst_and_composes_with_srpt() -> None:
    q = make_queue(PolicySpec("drr+srpt", estimator=by_work), "a", Ledger())
    for i in range(100):  # a burst from one tenant
        q.push(f"burst{i}", adm(f"b{i}", "noisy", work=1.0), 0.0)
    q.push("quiet-long", adm("q1", "quiet", work=5.0), 0.0)
    q.push("quiet-short", adm("q2", "quiet", work=1.0), 0.0)
    order = [q.pop(0.0)[0] for _ in range(4)]
    # The quiet tenant's records run within its turns, shortest first, not after the burst.
    assert order.index("quiet-short") < order.index("quiet-long") <= 3
    assert len(q) == 98


def test_drop_removes_records_and_keeps_the_ledger_consistent() -> None:
    ledger = Ledger()
    for policy in ("fifo", "srpt", "plas", "join_aware", "drr+plas"):
        q = make_queue(policy, "a", ledger)
        for i in range(10):
            q.push(i, adm(f"j{i % 2}", f"t{i % 3}"), 0.0)
        q.drop(lambda i: i % 2 == 0)
        assert sorted(q) == [1, 3, 5, 7, 9]
        assert sorted(drain(q)) == [1, 3, 5, 7, 9]
        assert ledger.outstanding("j0") == 0 and ledger.outstanding("j1") == 5
        for _ in range(5):
            ledger.dequeued(adm("j1"))
        assert ledger.outstanding("j1") == 0


def test_unknown_policies_and_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown scheduling policy"):
        make_queue("lottery", "a", Ledger())
    with pytest.raises(ConfigError):
        make_queue(PolicySpec("drr", weights={"x": 0}), "a", Ledger())


def test_token_bucket_waits_and_tokens_can_go_into_debt() -> None:
    bucket = TokenBucket(rate=2.0, burst=2.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.wait_s(0.0) == pytest.approx(0.5)
    assert bucket.wait_s(0.5) == 0.0
    limiter = RateLimit(requests_per_s=10.0, tokens_per_s=100.0).limiter()
    assert limiter.wait_s(0.0) == 0.0
    limiter.started(0.0)
    limiter.used_tokens(0.0, 300.0)  # 100 banked: 200 in debt -> 2 s to pay back
    assert limiter.wait_s(0.0) == pytest.approx(2.0)
    assert limiter.wait_s(2.0) == 0.0
