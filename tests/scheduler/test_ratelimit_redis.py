"""Rate limits shared in Redis: two workers of one agent draw on one limit (on a real
redis-server from tests/services.py); an unreachable Redis is an error, never no limit."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
import redis
from pydantic import BaseModel

from agents.agent import App
from agents.context import Context
from agents.worker import Worker
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.errors import ConfigError, StoreUnavailableError
from blackboard.shell.testing import FAST_SETTINGS
from compose.redis_local import RedisLocal, RedisLocalError
from scheduler import RateLimit, ratelimit_redis
from scheduler.ratelimit import RateLimiter
from scheduler.ratelimit_redis import RedisRateLimiter, bucket_key
from tests.services import unique_name

pytestmark = pytest.mark.redis

reg = TypeRegistry()


@artifact("rl.Call", registry=reg)
class Call(BaseModel):
    n: int


@artifact("rl.Answer", registry=reg)
class Answer(BaseModel):
    n: int


async def _run_two_workers(
    limit: RateLimit, records: int, concurrency: int, tokens_each: int = 0
) -> list[float]:
    """Two workers (slots 0 and 1) of one agent on one embedded store until every record is
    answered; the times its handler calls started."""
    app = App(registry=reg)
    starts: list[float] = []

    @app.agent(
        consumes=Call, publishes=Answer, concurrency=concurrency, rate_limit=limit, breaker=None
    )
    async def caller(call: Call, ctx: Context) -> Answer:
        starts.append(time.monotonic())
        if tokens_each:
            ctx.report_tokens(tokens_each)
        return Answer(n=call.n)

    prefix = unique_name("rl")
    board = Blackboard(
        "memory://", registry=reg, settings=BlackboardSettings(prefix=prefix, partitions=4)
    )
    board.ensure_topics(app.types())
    workers = [Worker(app, board, FAST_SETTINGS, slot=str(i)) for i in range(2)]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        for w in workers:
            await w.started()
        for i in range(records):
            board.publish(Call(n=i), partition_key=f"k{i}")
        deadline = time.monotonic() + 30
        while len(starts) < records:
            assert time.monotonic() < deadline, f"only {len(starts)} calls after 30s"
            for t in tasks:
                if t.done():
                    t.result()
            await asyncio.sleep(0.01)
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*tasks)
        board.close()
    # Both workers took part (the group spread the partitions over them).
    assert all(w.runners[0].stats.processed > 0 for w in workers)
    return sorted(starts)


def _rate(starts: list[float], banked: int) -> float:
    """Calls per second after the banked burst."""
    after = starts[banked:]
    return (len(after) - 1) / (after[-1] - after[0])


async def test_two_workers_share_a_requests_per_second_limit(redis_url: str) -> None:
    limit = RateLimit(requests_per_s=20.0, burst_s=0.1, shared=redis_url)  # 2 banked
    starts = await _run_two_workers(limit, records=60, concurrency=8)
    rate = _rate(starts, 2)
    # One shared 20/s: ~20/s in total. Each worker with its own 20/s would make ~40/s.
    assert 15.0 <= rate <= 24.0, rate
    assert starts[-1] - starts[0] >= 2.4


async def test_two_workers_share_a_tokens_per_second_limit(redis_url: str) -> None:
    limit = RateLimit(tokens_per_s=1000.0, burst_s=0.1, shared=redis_url)  # 100 banked
    # 100 tokens a call at 1000 tokens/s: 10 calls/s in total (20/s with a limit each).
    starts = await _run_two_workers(limit, records=24, concurrency=1, tokens_each=100)
    rate = _rate(starts, 2)
    assert 7.0 <= rate <= 13.0, rate


async def test_the_bucket_lives_in_redis_under_the_agent_and_gets_lease_back(
    redis_url: str,
) -> None:
    scope = f"{unique_name('rl')}.caller"
    limit = RateLimit(requests_per_s=10.0, lease_s=0.3, shared=redis_url)  # leases of 3
    one, two = RedisRateLimiter(limit, redis_url, scope), RedisRateLimiter(limit, redis_url, scope)
    await one.open()
    await two.open()
    raw = redis.Redis.from_url(redis_url)
    try:
        assert one.requests is not None and two.requests is not None
        assert one.requests.lease == two.requests.lease == 3.0
        left = float(raw.hget(bucket_key(scope, "requests"), "tokens") or 0)
        assert 3.9 <= left <= 4.5  # 10 banked, 6 leased
        now = asyncio.get_running_loop().time()
        assert one.wait_s(now) == 0.0
        one.started(now)
        await one.close()  # gives its 2 unspent tokens back
        left = float(raw.hget(bucket_key(scope, "requests"), "tokens") or 0)
        assert 5.9 <= left <= 6.6
    finally:
        await two.close()
        raw.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_redis_stops_the_worker_with_a_clear_error() -> None:
    app = App(registry=reg)

    @app.agent(
        consumes=Call,
        publishes=Answer,
        rate_limit=RateLimit(requests_per_s=5.0, shared=f"redis://127.0.0.1:{_closed_port()}/0"),
        breaker=None,
    )
    async def caller(call: Call, ctx: Context) -> Answer:
        return Answer(n=call.n)

    board = Blackboard("memory://", registry=reg)
    worker = Worker(app, board, FAST_SETTINGS)
    with pytest.raises(StoreUnavailableError, match="rate-limit Redis"):
        await asyncio.wait_for(worker.run(), 10)
    board.close()


async def test_redis_lost_mid_run_stops_the_worker_and_lifts_no_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit_redis, "UNAVAILABLE_S", 0.5)
    server = RedisLocal(data_dir=tmp_path / "redis", appendonly=False, die_with_parent=True)
    try:
        server.start()
    except RedisLocalError as exc:
        pytest.skip(f"no private redis-server: {exc}")
    app = App(registry=reg)
    starts: list[float] = []

    @app.agent(
        consumes=Call,
        publishes=Answer,
        concurrency=4,
        rate_limit=RateLimit(requests_per_s=10.0, burst_s=0.2, shared=server.url),  # leases of 1
        breaker=None,
    )
    async def caller(call: Call, ctx: Context) -> Answer:
        starts.append(time.monotonic())
        return Answer(n=call.n)

    board = Blackboard("memory://", registry=reg)
    board.ensure_topics(app.types())
    worker = Worker(app, board, FAST_SETTINGS)
    task = asyncio.create_task(worker.run())
    try:
        await worker.started()
        for i in range(3):
            board.publish(Call(n=i))
        deadline = time.monotonic() + 10
        while len(starts) < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    finally:
        server.stop()
    before = len(starts)
    for i in range(50):
        board.publish(Call(n=100 + i))
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        await asyncio.wait_for(task, 10)
    board.close()
    assert len(starts) - before <= 1  # what the lease held; never an unlimited run


def test_shared_url_must_be_redis_or_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="redis://"):
        RateLimit(requests_per_s=1.0, shared="kafka://x:9092").limiter("bb.a")
    monkeypatch.setenv("BLACKBOARD_RATE_LIMIT_URL", "redis://127.0.0.1:1/0")
    assert isinstance(RateLimit(requests_per_s=1.0).limiter("bb.a"), RedisRateLimiter)
    local = RateLimit(requests_per_s=1.0, shared="memory://").limiter("bb.a")
    assert isinstance(local, RateLimiter)
    monkeypatch.delenv("BLACKBOARD_RATE_LIMIT_URL")
    assert isinstance(RateLimit(requests_per_s=1.0).limiter("bb.a"), RateLimiter)


async def test_calls_started_while_a_lease_refill_is_in_flight_are_not_granted_twice() -> None:
    """The lease a refill returns adds to what is left after the calls started meanwhile
    (``lease += await take()`` would read the lease before the round trip)."""
    limiter = RedisRateLimiter(
        RateLimit(requests_per_s=1000.0, lease_s=0.1), "redis://127.0.0.1:1/0", "bb.agent"
    )
    req = limiter.requests
    assert req is not None and req.chunk == 100
    req.lease = 40.0  # below half a chunk: the next sync tops it up

    async def take(bucket: object, want: float, pay: float) -> float:
        for _ in range(4):  # four calls start during the round trip to Redis
            limiter.started(0.0)
            await asyncio.sleep(0)
        return 60.0

    limiter._take = take  # type: ignore[method-assign]
    await limiter._sync()
    assert req.lease == 40.0 - 4 + 60.0
    await limiter._client.aclose()
