"""Throughput and end-to-end latency on Kafka or Redis: a two-stage pipeline A → B → C.

``python -m bench.kafka_pipeline [--store kafka|redis] [--bootstrap HOST:PORT]
[--redis-url URL] [--records N] [--rounds R] [--option KEY=VALUE] [--json]`` runs on one
broker (or one redis-server), in one process, an unmeasured warm-up round
of each variant, then R rounds of each in alternating order (plain, ours, ours, plain, ...: a
broker still warming up favours neither):

- ``plain``: the floor of any Python runtime — per stage one confluent-kafka ``read_committed``
  consumer and one transactional producer in a thread: consume up to ``commit_every`` records
  or ``commit_interval_ms`` after the first one, then ``begin_transaction``, produce,
  ``send_offsets_to_transaction``, ``commit_transaction``;
- ``ours``: :class:`agents.App` with two agents (A → B, B → C) run by
  :class:`agents.worker.Worker` on ``Blackboard("kafka://...")``, exactly-once, default
  :class:`agents.settings.RunnerSettings` (the same 100 records / 100 ms);
- at-least-once: our runtime does not offer it, and the output says so.

Both variants use the same librdkafka settings (:class:`KafkaSettings`), fresh topics of the
same partition count, and the same inputs: ``{"n": i}`` artifacts published up front by one
idempotent producer (:meth:`Blackboard.publish_many`, chunks of 1,000) from their own thread,
as fast as it goes, while the pipeline drains them; a short warm-up first, so group joins and
transaction set-up are not timed. The plain loop forwards key and headers unchanged and
re-encodes the JSON payload.

Figures: records/s = N / (first input published → last C record seen by a ``read_committed``
reader); latency of a record = CreateTime of its C record (stamped by stage 2's producer as it
produces inside the committing transaction, in both variants) minus the input's envelope
``created_at``. Inputs queue behind each other, so the latency includes that wait. Without
``--bootstrap`` (or ``KAFKA_BOOTSTRAP_SERVERS``) the script starts its own broker with
:class:`compose.kafka_local.KafkaLocal` and stops it at the end. Target: ours >= 0.7x plain.

Transactions: both variants are configured to commit every ``commit_every`` records or
``commit_interval_ms``. The plain loop waits for each commit; ours runs one commit at a time
while it goes on processing, so under a backlog a transaction carries what finished meanwhile
(the ``rec/txn`` column shows it). Both use the store's transactional settings, which retry
after 5 ms (librdkafka's default 100 ms back-off after CONCURRENT_TRANSACTIONS would cap either
loop near 10 transactions/s); ``--option producer.retry.backoff.ms=100`` restores it for both.

Redis (``--store redis``): the same pipeline, inputs and figures on ``Blackboard("redis://...")``.
The plain loop is then one redis-py client per stage in a thread: ``XREADGROUP`` (COUNT
``commit_every``, BLOCK until the batch is due) over the source topic's partition streams into a
local buffer (as librdkafka prefetches), batches of up to ``commit_every`` records or
``commit_interval_ms``, each one ``MULTI``/``EXEC`` that ``XADD``s the outputs (``0-*``, our
store's entry format, same partition) and ``XACK``s the inputs — no leases, no ``WATCH``, no
wake-up ``PUBLISH``: the floor of any Python runtime. The C reader ``XREAD``s the partition
streams (everything in a stream is committed); a record's latency is its C entry's ``t`` field
(stamped as stage 2 builds its committing ``MULTI``) minus the input's ``created_at``. Without
``--redis-url`` (or ``REDIS_URL``) the script starts its own ``redis-server`` with
:class:`compose.redis_local.RedisLocal` and stops it at the end. ``--option`` then sets store URL
query keys (:mod:`blackboard.stores.redis.settings`) for both variants.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import math
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTP
from confluent_kafka.admin import AdminClient
from redis import Redis
from redis.exceptions import RedisError, ResponseError

from agents.agent import App
from agents.context import Context
from agents.settings import RunnerSettings
from agents.worker import Worker
from bench.pipeline import A, B, C, registry
from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.records import TopicPartition
from blackboard.stores import store_class
from blackboard.stores.kafka.settings import KafkaSettings
from blackboard.stores.redis.entries import record_from, text
from blackboard.stores.redis.settings import RedisKeys, RedisSettings

PARTITIONS = 8
CHUNK = 1000
WARMUP = 200
WARMUP_ROUND = 5000
PLAIN = "plain confluent-kafka"
PLAIN_REDIS = "plain redis-py"
OURS = "ours exactly-once"
AT_LEAST_ONCE = "at-least-once: not offered (the runtime has only exactly-once commits)"
TARGET = 0.7


class BenchError(Exception):
    """A variant failed or did not finish in time."""


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"kafka_pipeline: {message}", file=sys.stderr, flush=True)


def is_redis(url: str) -> bool:
    """True for a Redis store URL."""
    return store_class(url).system == "redis"


def build_app() -> App:
    """Our pipeline: ``ab`` turns A into B, ``bc`` turns B into C."""
    app = App("bench", registry=registry)

    async def ab(a: A, ctx: Context) -> B:
        return B(n=a.n)

    async def bc(b: B, ctx: Context) -> C:
        return C(n=b.n)

    app.add(ab, consumes=A, publishes=B)
    app.add(bc, consumes=B, publishes=C)
    return app


def open_board(url: str, prefix: str) -> Blackboard:
    """A blackboard with its own topic prefix and :data:`PARTITIONS` partitions."""
    # The URL goes into the settings too: given settings, Blackboard opens settings.url.
    settings = BlackboardSettings(url=url, prefix=prefix, partitions=PARTITIONS)
    return Blackboard(url, registry=registry, settings=settings)


def publish_inputs(
    board: Blackboard, first: int, count: int, stop: threading.Event | None = None
) -> dict[int, float]:
    """Publish A(n) for n in [first, first + count) in chunks; return n → created_at (epoch s).
    A set ``stop`` ends it between chunks."""
    created: dict[int, float] = {}
    for start in range(first, first + count, CHUNK):
        if stop is not None and stop.is_set():
            break
        numbers = range(start, min(first + count, start + CHUNK))
        envelopes = board.publish_many([A(n=i) for i in numbers])
        for i, env in zip(numbers, envelopes, strict=True):
            created[i] = env.created_at.timestamp()
    return created


class Publisher:
    """Publishes the measured inputs from its own thread, as fast as it goes.

    Args:
        board: the blackboard of the variant.
        count: inputs A(0) … A(count - 1).
    """

    def __init__(self, board: Blackboard, count: int) -> None:
        self.created: dict[int, float] = {}
        self.error: BaseException | None = None
        self._board = board
        self._count = count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-publisher", daemon=True)

    def _run(self) -> None:
        try:
            self.created = publish_inputs(self._board, 0, self._count, self._stop)
        except BaseException as exc:  # reported by the waiting thread
            self.error = exc

    def start(self) -> None:
        """Start publishing."""
        self._thread.start()

    def check(self, variant: str) -> None:
        """Raise BenchError if publishing failed."""
        if self.error is not None:
            raise BenchError(f"{variant}: publishing the inputs failed: {self.error!r}")

    def join(self) -> dict[int, float]:
        """Wait for the end; return n → created_at (epoch s)."""
        self._thread.join()
        return self.created

    def stop(self) -> None:
        """End between chunks and wait (so the board is not closed under it)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(30)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (0 < q ≤ 1)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# -- the final topic's reader ------------------------------------------------------------------


class Sink:
    """Reads the final topic in a thread and notes, per input number, the C record's append
    time and when it became visible; :class:`KafkaSink` and :class:`RedisSink` fetch."""

    def __init__(self) -> None:
        self.produced_ms: dict[int, float] = {}
        self.seen_at: dict[int, float] = {}
        self.measured = 0
        self.last_seen_perf = 0.0
        self.duplicates = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sink", daemon=True)

    def _fetch(self) -> list[tuple[bytes | None, float]]:
        """Wait briefly for new C records; return (value, append time in ms) of each."""
        raise NotImplementedError

    def _close_client(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                fetched = self._fetch()
                wall, perf = time.time(), time.perf_counter()
                for value, produced_ms in fetched:
                    if value is None:
                        continue
                    n = int(orjson.loads(value)["n"])
                    if n in self.produced_ms:
                        self.duplicates += 1
                        continue
                    self.produced_ms[n] = produced_ms
                    self.seen_at[n] = wall
                    if n >= 0:
                        self.measured += 1
                        self.last_seen_perf = perf
        except BaseException as exc:  # reported by the waiting thread
            self.error = exc
        finally:
            self._close_client()

    def count(self, warmup: bool = False) -> int:
        """How many distinct measured (or, with ``warmup``, warm-up) records arrived."""
        return len(self.produced_ms) - self.measured if warmup else self.measured

    def close(self) -> None:
        """Stop reading and close the client."""
        self._stop.set()
        self._thread.join(10)


class KafkaSink(Sink):
    """Reads topic C ``read_committed``; the append time is the C record's CreateTime.

    Args:
        settings: the librdkafka settings of the run.
        topic: the final topic.
    """

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        super().__init__()
        config = {**settings.reader_config(), "fetch.wait.max.ms": 10}
        self._consumer = Consumer(config)
        self._consumer.assign([KafkaTP(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        self._thread.start()

    def _fetch(self) -> list[tuple[bytes | None, float]]:
        return [
            (m.value(), float(m.timestamp()[1]))
            for m in self._consumer.consume(1000, 0.05)
            if m.error() is None
        ]

    def _close_client(self) -> None:
        self._consumer.close()


class RedisSink(Sink):
    """Reads topic C's partition streams with ``XREAD`` (everything in a stream is committed)
    and decodes entries as the store does; the append time is the entry's ``t`` field.

    Args:
        url: the store URL of the run (its own connection).
        topic: the final topic.
    """

    def __init__(self, url: str, topic: str) -> None:
        super().__init__()
        settings = RedisSettings.from_url(url)
        keys = RedisKeys(settings.key_prefix)
        self._topic = topic
        self._client = Redis.from_url(settings.connection_url, protocol=2)
        self._partition = {
            keys.stream(TopicPartition(topic, p)).encode(): p for p in range(PARTITIONS)
        }
        self._cursor: dict[bytes, bytes] = dict.fromkeys(self._partition, b"0-0")
        self._thread.start()

    def _fetch(self) -> list[tuple[bytes | None, float]]:
        reply: Any = self._client.xread(self._cursor, count=1000, block=50)  # type: ignore[arg-type]
        out: list[tuple[bytes | None, float]] = []
        for stream, entries in reply or ():
            partition = self._partition[stream]
            for entry, fields in entries:
                rec = record_from(self._topic, partition, entry, fields)
                out.append((rec.value, rec.timestamp * 1000.0))
                self._cursor[stream] = entry
        return out

    def _close_client(self) -> None:
        self._client.close()


def open_sink(url: str, topic: str) -> Sink:
    """The final topic's reader for the store ``url`` names."""
    if is_redis(url):
        return RedisSink(url, topic)
    return KafkaSink(KafkaSettings.from_url(url), topic)


# -- the plain loop ----------------------------------------------------------------------------


class PlainStage:
    """One consume-transform-produce stage on bare confluent-kafka, in its own thread.

    Args:
        settings: the librdkafka settings of the run (same as our store's).
        group: consumer group (also the transactional id's stem).
        source: topic read.
        target: topic written.
        runner: commit thresholds (``commit_every``, ``commit_interval_ms``).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        group: str,
        source: str,
        target: str,
        runner: RunnerSettings,
    ) -> None:
        self.group = group
        self.commits = 0
        self.error: BaseException | None = None
        self._source = source
        self._target = target
        self._every = runner.commit_every
        self._interval = runner.commit_interval_ms / 1000.0
        self._consumer = Consumer(settings.consumer_config(group))
        self._producer = Producer(settings.transactional_config(f"{group}.0"))
        self._producer.init_transactions(30)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"plain-{group}", daemon=True)

    def start(self) -> None:
        """Subscribe and start the loop."""
        self._consumer.subscribe([self._source])
        self._thread.start()

    def _run(self) -> None:
        batch: list[Any] = []
        deadline = 0.0
        try:
            while not self._stop.is_set():
                if batch and (len(batch) >= self._every or time.monotonic() >= deadline):
                    self._commit(batch)
                    batch = []
                wait = max(0.0, deadline - time.monotonic()) if batch else self._interval
                for m in self._consumer.consume(self._every - len(batch), wait):
                    if m.error() is None:
                        if not batch:
                            deadline = time.monotonic() + self._interval
                        batch.append(m)
            if batch:
                self._commit(batch)
        except BaseException as exc:  # reported by the waiting thread
            self.error = exc
        finally:
            self._consumer.close()
            self._producer.flush(10)

    def _commit(self, batch: list[Any]) -> None:
        producer, target = self._producer, self._target
        producer.begin_transaction()
        positions: dict[tuple[str, int], int] = {}
        for m in batch:
            value = orjson.dumps({"n": orjson.loads(m.value())["n"]})
            producer.produce(target, value, m.key(), partition=m.partition(), headers=m.headers())
            positions[(m.topic(), m.partition())] = m.offset() + 1
        offsets = [KafkaTP(t, p, o) for (t, p), o in positions.items()]
        producer.send_offsets_to_transaction(offsets, self._consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(30)
        self.commits += 1

    def stop(self) -> None:
        """Finish the current batch, commit it, leave the group."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(30)
        else:  # never started
            self._consumer.close()
            self._producer.flush(10)


class RedisPlainStage:
    """One consume-transform-produce stage on bare redis-py, in its own thread.

    ``XREADGROUP`` over the source topic's partition streams into a local buffer; per batch
    (``commit_every`` records or ``commit_interval_ms`` after the first) one ``MULTI``/``EXEC``
    that ``XADD``s each output to the same partition of the target topic, in our store's entry
    format (:mod:`blackboard.stores.redis.entries`), and ``XACK``s the inputs. No leases.

    Args:
        url: the store URL of the run (its own connection).
        group: the Redis consumer group on the source streams.
        source: topic read.
        target: topic written.
        runner: commit thresholds (``commit_every``, ``commit_interval_ms``).
    """

    def __init__(
        self, url: str, group: str, source: str, target: str, runner: RunnerSettings
    ) -> None:
        settings = RedisSettings.from_url(url)
        keys = RedisKeys(settings.key_prefix)
        self.group = group
        self.commits = 0
        self.error: BaseException | None = None
        self._every = runner.commit_every
        self._interval = runner.commit_interval_ms / 1000.0
        self._client = Redis.from_url(settings.connection_url, protocol=2)
        self._sources = [keys.stream(TopicPartition(source, p)) for p in range(PARTITIONS)]
        self._partition = {s.encode(): p for p, s in enumerate(self._sources)}
        self._targets = [keys.stream(TopicPartition(target, p)) for p in range(PARTITIONS)]
        for stream in self._sources:
            try:
                self._client.xgroup_create(stream, group, id="0", mkstream=True)
            except ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"plain-{group}", daemon=True)

    def start(self) -> None:
        """Start the loop."""
        self._thread.start()

    def _read(self, wait: float) -> list[tuple[bytes, bytes, dict[bytes, bytes]]]:
        """Up to ``commit_every`` entries per stream, blocking up to ``wait`` seconds."""
        streams: Any = dict.fromkeys(self._sources, ">")
        reply: Any = self._client.xreadgroup(
            self.group, "plain", streams, count=self._every, block=max(1, int(wait * 1000))
        )
        return [
            (stream, entry, fields) for stream, entries in reply or () for entry, fields in entries
        ]

    def _run(self) -> None:
        buffered: collections.deque[tuple[bytes, bytes, dict[bytes, bytes]]] = collections.deque()
        batch: list[tuple[bytes, bytes, dict[bytes, bytes]]] = []
        deadline = 0.0
        try:
            while not self._stop.is_set():
                if batch and (len(batch) >= self._every or time.monotonic() >= deadline):
                    self._commit(batch)
                    batch = []
                if not buffered:
                    wait = max(0.0, deadline - time.monotonic()) if batch else self._interval
                    buffered.extend(self._read(wait))
                if buffered and not batch:
                    deadline = time.monotonic() + self._interval
                while buffered and len(batch) < self._every:
                    batch.append(buffered.popleft())
            if batch:
                self._commit(batch)
        except BaseException as exc:  # reported by the waiting thread
            self.error = exc
        finally:
            self._client.close()

    def _commit(self, batch: list[tuple[bytes, bytes, dict[bytes, bytes]]]) -> None:
        stamp = str(int(time.time() * 1000)).encode()
        acks: dict[bytes, list[bytes]] = {}
        with self._client.pipeline(transaction=True) as pipe:
            for stream, entry, fields in batch:
                out: dict[bytes, bytes] = {}  # the order entry_fields writes: k, v, h, t
                if b"k" in fields:
                    out[b"k"] = fields[b"k"]
                out[b"v"] = orjson.dumps({"n": orjson.loads(fields[b"v"])["n"]})
                if b"h" in fields:
                    out[b"h"] = fields[b"h"]
                out[b"t"] = stamp
                values: Any = out  # redis-py types the mapping invariantly; bytes are fine
                pipe.xadd(self._targets[self._partition[stream]], values, id="0-*")
                acks.setdefault(stream, []).append(entry)
            for stream, ids in acks.items():
                pipe.xack(stream, self.group, *ids)
            pipe.execute()
        self.commits += 1

    def stop(self) -> None:
        """Finish the current batch, commit it, close the connection."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(30)
        else:  # never started
            self._client.close()


# -- measuring -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Round:
    """What one run of one variant measured."""

    variant: str
    records: int
    seconds: float
    produced_ms: list[float]
    visible_ms: list[float]
    transactions: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class Result:
    """The figures of one variant over its rounds (latencies pooled)."""

    variant: str
    records: int
    seconds: float
    records_per_s: float
    p50_ms: float
    p99_ms: float
    visible_p50_ms: float
    visible_p99_ms: float
    records_per_transaction: float
    duplicates: int
    rounds_records_per_s: list[float]


def _round(
    variant: str,
    sink: Sink,
    created: dict[int, float],
    started: float,
    transactions: int,
) -> Round:
    n = len(created)
    return Round(
        variant=variant,
        records=n,
        seconds=sink.last_seen_perf - started,
        produced_ms=[sink.produced_ms[i] - created[i] * 1000.0 for i in range(n)],
        visible_ms=[(sink.seen_at[i] - created[i]) * 1000.0 for i in range(n)],
        transactions=transactions,
        duplicates=sink.duplicates,
    )


def summarize(variant: str, rounds: list[Round]) -> Result:
    """Pool the rounds of one variant: records/s = all records / all seconds."""
    records = sum(r.records for r in rounds)
    seconds = sum(r.seconds for r in rounds)
    produced = [x for r in rounds for x in r.produced_ms]
    visible = [x for r in rounds for x in r.visible_ms]
    transactions = sum(r.transactions for r in rounds)
    return Result(
        variant=variant,
        records=records,
        seconds=round(seconds, 3),
        records_per_s=round(records / seconds, 1),
        p50_ms=round(percentile(produced, 0.50), 1),
        p99_ms=round(percentile(produced, 0.99), 1),
        visible_p50_ms=round(percentile(visible, 0.50), 1),
        visible_p99_ms=round(percentile(visible, 0.99), 1),
        records_per_transaction=round(
            2 * (records + WARMUP * len(rounds)) / max(1, transactions), 1
        ),
        duplicates=sum(r.duplicates for r in rounds),
        rounds_records_per_s=[round(r.records / r.seconds, 1) for r in rounds],
    )


class Waiter:
    """Waits for the sink to reach a count, failing on a dead stage or a deadline, and prints
    progress every two seconds."""

    def __init__(self, variant: str, sink: Sink, check: Callable[[], None]) -> None:
        self.variant = variant
        self.sink = sink
        self.check = check
        self._next_report = 0.0

    def done(self, target: int, warmup: bool, deadline: float) -> bool:
        """True once ``target`` records arrived; raises BenchError on failure or timeout."""
        self.check()
        if self.sink.error is not None:
            raise BenchError(f"{self.variant}: the C reader failed: {self.sink.error!r}")
        got = self.sink.count(warmup)
        if got >= target:
            return True
        now = time.monotonic()
        what = "warm-up" if warmup else "measured"
        if now > deadline:
            raise BenchError(f"{self.variant}: only {got}/{target} {what} C records in time")
        if now >= self._next_report:
            self._next_report = now + 2.0
            progress(f"{self.variant}: {got}/{target} {what} C records")
        return False


def _deadline(records: int) -> float:
    return time.monotonic() + 60.0 + records / 100.0


def plain_variant(url: str) -> str:
    """The name of the plain loop on the store ``url`` names."""
    return PLAIN_REDIS if is_redis(url) else PLAIN


def run_plain(url: str, records: int, runner: RunnerSettings) -> Round:
    """The plain loop (confluent-kafka or redis-py, as ``url`` says): two threaded stages,
    inputs from their own thread."""
    variant = plain_variant(url)
    prefix = f"bench-{uuid.uuid4().hex[:8]}-plain"
    board = open_board(url, prefix)
    a, b, c = (board.topic(t) for t in (A, B, C))
    stages: list[PlainStage | RedisPlainStage] = []
    sink: Sink | None = None
    publisher = Publisher(board, records)
    try:
        board.ensure_topics([registry.of(t) for t in (A, B, C)])
        if is_redis(url):
            stages = [
                RedisPlainStage(url, f"{prefix}.ab", a, b, runner),
                RedisPlainStage(url, f"{prefix}.bc", b, c, runner),
            ]
        else:
            settings = KafkaSettings.from_url(url)
            stages = [
                PlainStage(settings, f"{prefix}.ab", a, b, runner),
                PlainStage(settings, f"{prefix}.bc", b, c, runner),
            ]
        sink = open_sink(url, c)
        for stage in stages:
            stage.start()

        def check() -> None:
            publisher.check(variant)
            for stage in stages:
                if stage.error is not None:
                    raise BenchError(f"{variant}: stage {stage.group} failed: {stage.error!r}")

        waiter = Waiter(variant, sink, check)
        publish_inputs(board, -WARMUP, WARMUP)
        deadline = _deadline(WARMUP)
        while not waiter.done(WARMUP, True, deadline):
            time.sleep(0.01)
        started = time.perf_counter()
        publisher.start()
        deadline = _deadline(records)
        while not waiter.done(records, False, deadline):
            time.sleep(0.01)
        created = publisher.join()
        transactions = sum(s.commits for s in stages)
        return _round(variant, sink, created, started, transactions)
    finally:
        publisher.stop()
        for stage in stages:
            stage.stop()
        if sink is not None:
            sink.close()
        board.close()
        drop_prefix(url, prefix)


async def run_ours(url: str, records: int, runner: RunnerSettings) -> Round:
    """Our runtime on the store ``url`` names (Kafka or Redis): a Worker running the two agents;
    inputs published from their own thread."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}-ours"
    board = open_board(url, prefix)
    app = build_app()
    sink: Sink | None = None
    publisher = Publisher(board, records)
    try:
        board.ensure_topics(app.types())
        worker = Worker(app, board, runner)
        sink = open_sink(url, board.topic(C))
        task = asyncio.create_task(worker.run(), name="bench-worker")

        def check() -> None:
            publisher.check(OURS)
            if task.done():
                why = "cancelled" if task.cancelled() else repr(task.exception())
                raise BenchError(f"{OURS}: the worker stopped: {why}")

        try:
            await worker.started()
            waiter = Waiter(OURS, sink, check)
            await asyncio.to_thread(publish_inputs, board, -WARMUP, WARMUP)
            deadline = _deadline(WARMUP)
            while not waiter.done(WARMUP, True, deadline):  # noqa: ASYNC110 - a thread counts, no event
                await asyncio.sleep(0.01)
            started = time.perf_counter()
            publisher.start()
            deadline = _deadline(records)
            while not waiter.done(records, False, deadline):  # noqa: ASYNC110 - as above
                await asyncio.sleep(0.01)
            created = await asyncio.to_thread(publisher.join)
            transactions = sum(r.stats.commits for r in worker.runners)
            return _round(OURS, sink, created, started, transactions)
        finally:
            worker.stop()
            with contextlib.suppress(Exception):
                await task
    finally:
        publisher.stop()
        if sink is not None:
            sink.close()
        board.close()
        drop_prefix(url, prefix)


async def _ours_until_terminated(url: str, records: int, runner: RunnerSettings) -> Round:
    """:func:`run_ours`, stopped by SIGTERM the way asyncio stops it on Ctrl-C: the main task is
    cancelled, so the worker drains and the clients close, instead of an exception raised
    inside whichever handler happens to run."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        main_task.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await run_ours(url, records, runner)
    except asyncio.CancelledError:
        if terminated:
            raise KeyboardInterrupt from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _interrupt)  # the threaded variants' handler again


def drop_prefix(url: str, prefix: str) -> None:
    """Delete the topics and consumer groups of one variant (best effort)."""
    if is_redis(url):
        drop_redis_prefix(url, prefix)
        return
    settings = KafkaSettings.from_url(url)
    admin = AdminClient(settings.admin_config())
    try:
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix + ".")]
        if topics:
            for future in admin.delete_topics(topics, operation_timeout=30).values():
                future.result()
        groups = [f"{prefix}.{g}" for g in ("ab", "bc")]
        for future in admin.delete_consumer_groups(groups, request_timeout=10).values():
            with contextlib.suppress(KafkaException):
                future.result()
    except KafkaException as exc:
        progress(f"could not delete the topics of {prefix}: {exc}")


def drop_redis_prefix(url: str, prefix: str) -> None:
    """Delete the streams, group keys and registrations of one variant (best effort)."""
    settings = RedisSettings.from_url(url)
    keys = RedisKeys(settings.key_prefix)
    head = prefix + "."
    client = Redis.from_url(settings.connection_url, protocol=2)
    try:
        for pattern in (f"{keys.prefix}s:{head}*", f"{keys.prefix}g:{head}*"):
            names = list(client.scan_iter(match=pattern, count=1000))
            for i in range(0, len(names), 500):
                client.delete(*names[i : i + 500])
        topics = [t for t in client.hkeys(keys.topics) if text(t).startswith(head)]
        if topics:
            client.hdel(keys.topics, *topics)
        groups = [g for g in client.smembers(keys.groups) if text(g).startswith(head)]
        if groups:
            client.srem(keys.groups, *groups)
    except RedisError as exc:
        progress(f"could not delete the keys of {prefix}: {exc}")
    finally:
        client.close()


# -- the servers and the command line -----------------------------------------------------------


@contextlib.contextmanager
def kafka_broker(bootstrap: str | None) -> Iterator[tuple[str, str]]:
    """Yield ``(host:port, description)``: the given broker, or a local one started here (a
    temporary data dir on free ports) and stopped at the end by its own API."""
    address = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if address:
        yield address, "external"
        return
    from compose.kafka_local import KafkaLocal

    local = KafkaLocal(die_with_parent=True)
    progress(f"starting a local Kafka {local.version} broker in {local.data_dir}")
    try:
        local.start()
        progress(f"broker ready on {local.bootstrap}")
        yield local.bootstrap, f"local Kafka {local.version} (started by the benchmark)"
    finally:
        progress("stopping the local broker")
        local.cleanup()


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[tuple[str, str]]:
    """Yield ``(redis URL, description)``: the given server, or a local one started here (a
    temporary data dir on a free port) and stopped at the end by its own API."""
    given = url or os.environ.get("REDIS_URL")
    if given:
        yield given, "external Redis"
        return
    from compose.redis_local import RedisLocal

    local = RedisLocal(die_with_parent=True)
    progress(f"starting a local redis-server in {local.data_dir}")
    try:
        local.start()
        client = Redis.from_url(local.url, protocol=2)
        try:
            version = str(client.info("server").get("redis_version", "?"))
        finally:
            client.close()
        progress(f"redis-server {version} ready on {local.url}")
        yield local.url, f"local Redis {version} (started by the benchmark)"
    finally:
        progress("stopping the local redis-server")
        local.cleanup()


def with_options(url: str, query: str) -> str:
    """``url`` with the query ``query`` appended."""
    if not query:
        return url
    return url + ("&" if "?" in url else "?") + query


@contextlib.contextmanager
def store_url(
    store: str, bootstrap: str | None, redis_url: str | None, query: str
) -> Iterator[tuple[str, str]]:
    """Yield ``(store URL with the options, description)`` of the server the run uses."""
    if store == "redis":
        with redis_server(redis_url) as (url, server):
            yield with_options(url, query), server
    else:
        with kafka_broker(bootstrap) as (address, broker):
            yield with_options(f"kafka://{address}", query), broker


def _run_variant(variant: str, url: str, records: int, runner: RunnerSettings) -> Round:
    progress(f"{variant}: {records} records")
    if variant == plain_variant(url):
        measured = run_plain(url, records, runner)
    else:
        measured = asyncio.run(_ours_until_terminated(url, records, runner))
    gc.collect()  # closes the clients a variant left in reference cycles while the server is up
    progress(f"{variant}: {measured.records / measured.seconds:.0f} records/s")
    return measured


def run(
    bootstrap: str | None,
    records: int,
    rounds: int,
    options: list[str],
    *,
    store: str = "kafka",
    redis_url: str | None = None,
) -> dict[str, Any]:
    """Run every variant ``rounds`` times on one server and return the JSON document.

    An unmeasured round of each variant comes first, then the rounds alternate the order
    (plain, ours, ours, plain, ...) so that a server still warming up favours neither.
    ``options`` are ``key=value`` store URL query keys, given to both variants alike: librdkafka
    overrides on Kafka (:mod:`blackboard.stores.kafka.settings`), our keys or redis-py options
    on Redis (:mod:`blackboard.stores.redis.settings`).
    """
    runner = RunnerSettings()
    query = urlencode([(k, v) for k, _, v in (o.partition("=") for o in options)])
    redis = store == "redis"
    plain_name = PLAIN_REDIS if redis else PLAIN
    measured: dict[str, list[Round]] = {plain_name: [], OURS: []}
    with store_url(store, bootstrap, redis_url, query) as (url, server):
        progress("warm-up round, not measured (a cold server commits transactions slowly)")
        for variant in (plain_name, OURS):
            _run_variant(variant, url, min(records, WARMUP_ROUND), runner)
        for i in range(rounds):
            order = (plain_name, OURS) if i % 2 == 0 else (OURS, plain_name)
            for variant in order:
                measured[variant].append(_run_variant(variant, url, records, runner))
    plain, ours = summarize(plain_name, measured[plain_name]), summarize(OURS, measured[OURS])
    ratio = round(ours.records_per_s / plain.records_per_s, 3)
    variants = [
        asdict(plain) | {"ratio_to_plain": 1.0},
        asdict(ours) | {"ratio_to_plain": ratio},
    ]
    if redis:
        inputs = (
            f"published up front by Blackboard.publish_many (chunks of {CHUNK}, one MULTI/EXEC "
            "each) from their own thread, as fast as it goes, while the pipeline drains them"
        )
        throughput = "records / (first input published -> last C entry XREAD), summed over rounds"
        latency = (
            "C entry's t field (stamped as stage 2 builds its committing MULTI) - input "
            "envelope created_at; visible_*: when an XREAD reader got it instead"
        )
    else:
        inputs = (
            f"published up front by one idempotent producer (Blackboard.publish_many, chunks of "
            f"{CHUNK}) from their own thread, as fast as it goes, while the pipeline drains them"
        )
        throughput = (
            "records / (first input published -> last C record read read_committed), "
            "summed over the rounds"
        )
        latency = (
            "C record CreateTime (stamped as stage 2 produces it inside the committing "
            "transaction) - input envelope created_at; visible_*: when a read_committed "
            "reader got it instead"
        )
    return {
        "store": store,
        "broker": server,
        "records": records,
        "rounds": rounds,
        "partitions": PARTITIONS,
        "store_options": options,
        "librdkafka_overrides": [] if redis else options,
        "warmup_records": WARMUP,
        "warmup_round_records": min(records, WARMUP_ROUND),
        "commit_every": runner.commit_every,
        "commit_interval_ms": runner.commit_interval_ms,
        "inputs": inputs,
        "throughput": throughput,
        "latency": latency,
        "variants": variants,
        "at_least_once": "not offered",
        "target_ratio": TARGET,
        "target_met": ratio >= TARGET,
    }


def print_table(doc: dict[str, Any]) -> None:
    """The human-readable form of the document."""
    store = "Redis" if doc.get("store") == "redis" else "Kafka"
    print(
        f"{store} pipeline A -> B -> C: {doc['records']} records x {doc['rounds']} rounds "
        f"per variant, {doc['partitions']} partitions, "
        f"commit every {doc['commit_every']} records / {doc['commit_interval_ms']:g} ms "
        f"({doc['broker']})"
    )
    if doc["store_options"]:
        what = "store URL options" if store == "Redis" else "librdkafka overrides"
        print(f"{what} (both variants): {' '.join(doc['store_options'])}")
    print(f"inputs: {doc['inputs']}")
    print(f"records/s: {doc['throughput']}")
    print(f"latency: {doc['latency']}")
    print()
    print(
        f"{'variant':<24} {'records/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6}"
        f" {'vis p50':>8} {'vis p99':>8} {'rec/txn':>8}  records/s per round"
    )
    for v in doc["variants"]:
        print(
            f"{v['variant']:<24} {v['records_per_s']:>10.0f} {v['p50_ms']:>8.1f}"
            f" {v['p99_ms']:>8.1f} {v['ratio_to_plain']:>6.2f} {v['visible_p50_ms']:>8.1f}"
            f" {v['visible_p99_ms']:>8.1f} {v['records_per_transaction']:>8.1f}"
            f"  {' '.join(f'{r:.0f}' for r in v['rounds_records_per_s'])}"
        )
    print(AT_LEAST_ONCE)
    ours = doc["variants"][-1]
    verdict = "met" if doc["target_met"] else "missed"
    print(f"target ours >= {doc['target_ratio']}x plain: {verdict} ({ours['ratio_to_plain']:.2f}x)")
    dups = sum(v["duplicates"] for v in doc["variants"])
    if dups:
        print(f"WARNING: {dups} duplicate C records")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops like Ctrl-C: clients closed, servers stopped


def main() -> None:
    """Parse the arguments, run the variants and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", choices=("kafka", "redis"), default="kafka", help="the store to run on"
    )
    parser.add_argument(
        "--bootstrap",
        help="an existing broker (default: KAFKA_BOOTSTRAP_SERVERS, else start a local one)",
    )
    parser.add_argument(
        "--redis-url",
        help="an existing Redis, redis://host:port/db (default: REDIS_URL, else start a local "
        "redis-server)",
    )
    parser.add_argument("--records", type=int, default=20_000, help="inputs per variant and round")
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs of each variant, in alternating order"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="store URL query key for both variants: a librdkafka override on Kafka (e.g. "
        "producer.retry.backoff.ms=5), a Redis store key or redis-py option on Redis; repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    if args.records < 1 or args.rounds < 1:
        parser.error("--records and --rounds must be at least 1")
    if any("=" not in o for o in args.option):
        parser.error("--option takes KEY=VALUE")
    from blackboard.logs import configure_logging

    configure_logging("warning")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        doc = run(
            args.bootstrap,
            args.records,
            args.rounds,
            args.option,
            store=args.store,
            redis_url=args.redis_url,
        )
    except KeyboardInterrupt:
        progress("interrupted")
        sys.exit(130)
    except BenchError as exc:
        print(f"kafka_pipeline: error: {exc}", file=sys.stderr)
        sys.exit(1)
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print_table(doc)


if __name__ == "__main__":
    main()
