"""Kafka settings built from the store URL; every librdkafka key is produced here, in one place.

``kafka://host:port[,host:port][?key=value&...]`` — query keys are raw librdkafka settings that
override the defaults for every client; ``producer.<key>``, ``consumer.<key>`` and
``admin.<key>`` target one kind of client (e.g. ``?producer.linger.ms=20&compression.type=zstd``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from blackboard.errors import ConfigError
from blackboard.redact import redact_url

#: Throughput and latency defaults (override any of them from the URL).
PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 5,
    "compression.type": "lz4",
    "batch.size": 262_144,
    "acks": "all",
    "enable.idempotence": True,
    "message.max.bytes": 1_000_000,
}
#: External publishes wait for every delivery report, which librdkafka gives within this time
#: (transactional producers keep theirs: librdkafka ties it to the transaction timeout).
PUBLISH_DEFAULTS: dict[str, Any] = {"message.timeout.ms": 30_000}
CONSUMER_DEFAULTS: dict[str, Any] = {
    "isolation.level": "read_committed",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    # range keeps equal partition numbers of co-partitioned topics on one member (joins)
    "partition.assignment.strategy": "range",
    "session.timeout.ms": 10_000,
    "heartbeat.interval.ms": 1_000,
    "fetch.wait.max.ms": 100,
    "fetch.min.bytes": 1,
    "max.partition.fetch.bytes": 1_048_576,
    "enable.partition.eof": False,
}
ADMIN_DEFAULTS: dict[str, Any] = {
    # list_offsets sends the partition leader's epoch from the metadata cache, and librdkafka
    # does not refresh it on FENCED_LEADER_EPOCH. After a broker restart (same leader, newer
    # epoch) end offsets and state restores would fail until the entry ages out: 15 min by
    # default. A short age bounds that to seconds, for one extra Metadata request per call.
    "metadata.max.age.ms": 5_000,
}
TRANSACTION_TIMEOUT_MS = 60_000
#: How long the store's admin calls (and its reads of committed records) wait for the cluster.
ADMIN_TIMEOUT_S = 15.0
#: The URL key of :attr:`KafkaSettings.transactional_id_prefix` (not a librdkafka property).
TRANSACTIONAL_ID_PREFIX = "transactional.id.prefix"
#: librdkafka keys the store sets itself (per slot or per group); a URL may not override them.
_STORE_MANAGED = {"transactional.id", "group.id"}


@functools.cache
def _client_defaults() -> dict[str, Any]:
    """Defaults for every client (producer, consumer, admin), before the URL's overrides."""
    import confluent_kafka

    if confluent_kafka.libversion()[1] < 0x020A0000:
        return {}
    # librdkafka >= 2.10 "re-bootstraps" when every known broker is down (a single broker
    # restarting): it decommissions the broker handles, but the coordinator cache keeps
    # pointing at the dead handle, and a coordinator request waiting on it is never woken
    # nor timed out (librdkafka #5456, #5511). send_offsets_to_transaction() then hangs for
    # good after a broker restart. Without re-bootstrap the handle stays and reconnects. Use
    # ?metadata.recovery.strategy=rebootstrap where every broker address can change at once.
    return {"metadata.recovery.strategy": "none"}


class _ToStructlog(logging.Handler):
    """Forwards librdkafka's log lines (a stdlib logger is what confluent-kafka accepts)."""

    def emit(self, record: logging.LogRecord) -> None:
        from blackboard.logs import get_logger

        level = "warning" if record.levelno >= logging.WARNING else "debug"
        getattr(get_logger("librdkafka"), level)(record.getMessage())


@functools.cache
def librdkafka_logger() -> logging.Logger:
    """The logger every client of this package hands librdkafka."""
    logger = logging.getLogger("kafka_blackboard.librdkafka")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(_ToStructlog())
    return logger


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Where the brokers are, the raw librdkafka overrides, and the store's own options.

    ``transactional_id_prefix`` (URL key ``transactional.id.prefix``) goes in front of every
    worker slot's transactional id, ``<prefix><group>.<slot>``, e.g. to match a PREFIXED
    TransactionalId ACL.
    """

    bootstrap: str
    common: dict[str, str] = field(default_factory=dict)
    producer: dict[str, str] = field(default_factory=dict)
    consumer: dict[str, str] = field(default_factory=dict)
    admin: dict[str, str] = field(default_factory=dict)
    transactional_id_prefix: str = ""

    @classmethod
    def from_url(cls, url: str) -> KafkaSettings:
        """Parse ``kafka://host:port[,...][?key=value...]``.

        Raises:
            ConfigError: no host, or a malformed host:port.
        """
        parts = urlsplit(url)
        hosts = parts.netloc
        if not hosts:
            raise ConfigError(
                f"kafka store URL {redact_url(url)!r} names no broker: use kafka://host:port"
            )
        for host in hosts.split(","):
            name, _, port = host.rpartition(":")
            if not name or not port.isdigit():
                raise ConfigError(f"kafka store URL {redact_url(url)!r}: {host!r} is not host:port")
        common: dict[str, str] = {}
        scoped: dict[str, dict[str, str]] = {"producer": {}, "consumer": {}, "admin": {}}
        txn_prefix = ""
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            scope, _, rest = key.partition(".")
            if key == TRANSACTIONAL_ID_PREFIX:
                txn_prefix = value
            elif key in _STORE_MANAGED or rest in _STORE_MANAGED:
                raise ConfigError(
                    f"kafka store URL {redact_url(url)!r}: {key} is set by the store per "
                    "worker slot"
                    + (f"; use {TRANSACTIONAL_ID_PREFIX}=..." if "transactional" in key else "")
                )
            elif scope in scoped and rest:
                scoped[scope][rest] = value
            else:
                common[key] = value
        return cls(
            hosts,
            common,
            scoped["producer"],
            scoped["consumer"],
            scoped["admin"],
            transactional_id_prefix=txn_prefix,
        )

    def transactional_id(self, group: str, slot: str) -> str:
        """The transactional id of ``group``'s member in worker slot ``slot``."""
        return f"{self.transactional_id_prefix}{group}.{slot}"

    def _base(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap,
            "client.id": "kafka-blackboard",
            "logger": librdkafka_logger(),  # librdkafka's lines as structlog events on stderr
            **_client_defaults(),
        }

    def admin_config(self) -> dict[str, Any]:
        """For the AdminClient."""
        return {**self._base(), **ADMIN_DEFAULTS, **self.common, **self.admin}

    def producer_config(self) -> dict[str, Any]:
        """For the idempotent producer of external publishes."""
        return {
            **self._base(),
            **PRODUCER_DEFAULTS,
            **PUBLISH_DEFAULTS,
            **self.common,
            **self.producer,
        }

    def transactional_config(self, transactional_id: str) -> dict[str, Any]:
        """For a worker slot's transactional producer."""
        return {
            **self._base(),
            **PRODUCER_DEFAULTS,
            # A transaction begun right after a commit often hears CONCURRENT_TRANSACTIONS while
            # the coordinator writes the previous markers; librdkafka's default 100 ms back-off
            # then caps a worker near 10 transactions/s. Retries still back off exponentially.
            "retry.backoff.ms": 5,
            **self.common,
            **self.producer,
            "transactional.id": transactional_id,
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
        }

    def consumer_config(self, group: str) -> dict[str, Any]:
        """For a group member (``read_committed``, offsets only through transactions)."""
        return {
            **self._base(),
            **CONSUMER_DEFAULTS,
            "group.id": group,
            **self.common,
            **self.consumer,
        }

    def reader_config(self) -> dict[str, Any]:
        """For a group-less ``read_committed`` reader (tail, state restore)."""
        config = self.consumer_config("kafka-blackboard-reader")
        config.pop("partition.assignment.strategy", None)
        return config
