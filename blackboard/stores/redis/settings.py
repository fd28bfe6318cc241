"""Redis settings built from the store URL, and the one place key names are made.

``redis://[user:password@]host:port/db[?key=value&...]``. These query keys are ours; any other
is a redis-py connection option (``socket_timeout``, ``client_name``, …) passed on as it is:

- ``key_prefix`` (``bb:``): every key and channel of this store starts with it, so several
  blackboards can share one Redis database.
- ``session_timeout_ms`` (10000): a member that has not heartbeated for this long is out of
  its group and its partitions move (Kafka's ``session.timeout.ms``).
- ``heartbeat_interval_ms`` (1000): how often a member heartbeats, checks its leases and
  expels members whose session ran out.
- ``max_record_bytes`` (1000000): the largest record (key, value and headers) a commit or
  publish may write.
- ``trim_interval_s`` (0 = never): how often a member trims the streams it owns, below what
  every consumer group of each stream has committed.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from blackboard.errors import ConfigError
from blackboard.records import TopicPartition
from blackboard.redact import redact_url
from blackboard.store import MAX_RECORD_BYTES

_OURS = frozenset(
    {
        "key_prefix",
        "session_timeout_ms",
        "heartbeat_interval_ms",
        "max_record_bytes",
        "trim_interval_s",
    }
)


class RedisSettings(BaseModel):
    """How the Redis store connects, names its keys and runs its groups."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    connection_url: str = Field(description="the URL redis-py connects with (our keys removed)")
    key_prefix: str = Field(default="bb:", description="prefix of every key and channel")
    session_timeout_ms: int = Field(default=10_000, ge=200)
    heartbeat_interval_ms: int = Field(default=1_000, ge=20)
    max_record_bytes: int = Field(default=MAX_RECORD_BYTES, ge=1024)
    trim_interval_s: float = Field(default=0.0, ge=0.0)

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> RedisSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                "heartbeat_interval_ms must be at most a third of session_timeout_ms "
                f"(got {self.heartbeat_interval_ms} and {self.session_timeout_ms})"
            )
        return self

    @classmethod
    def from_url(cls, url: str) -> RedisSettings:
        """Split ``url`` into our settings and the URL redis-py connects with.

        Raises:
            ConfigError: a setting of ours has a bad value.
        """
        parts = urlsplit(url)
        ours: dict[str, str] = {}
        theirs: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in _OURS:
                ours[key] = value
            else:
                theirs.append((key, value))
        connection_url = urlunsplit(parts._replace(query=urlencode(theirs)))
        try:
            return cls.model_validate({"connection_url": connection_url, **ours})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'url'}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"bad redis store URL {redact_url(url)!r}: {problems}") from exc

    @property
    def address(self) -> str:
        """``host:port/db`` for messages (no credentials)."""
        parts = urlsplit(self.connection_url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or '/0'}"


class RedisKeys:
    """Every key and channel name of one store (one prefix).

    Topics are one stream per partition; a group's keys share ``<prefix>g:<group>:``.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        #: hash: topic -> partition count
        self.topics = f"{prefix}topics"
        #: set: every group that joined or committed
        self.groups = f"{prefix}groups"
        #: channel: a topic was created
        self.topics_channel = f"{prefix}c:topics"

    def stream(self, tp: TopicPartition) -> str:
        """The stream holding one partition (entry ``0-(n+1)`` is offset ``n``)."""
        return f"{self.prefix}s:{tp.topic}:{tp.partition}"

    def data_channel(self, topic: str) -> str:
        """Channel told the partition number whenever records are appended to ``topic``."""
        return f"{self.prefix}n:{topic}"

    def group(self, group: str) -> GroupKeys:
        """The keys of one consumer group."""
        return GroupKeys(self, group)


class GroupKeys:
    """The keys of one consumer group."""

    def __init__(self, keys: RedisKeys, group: str) -> None:
        base = f"{keys.prefix}g:{group}:"
        self.name = group
        self._base = base
        #: sorted set: slot -> session expiry (Redis server time, ms)
        self.members = base + "members"
        #: hash: slot -> token of the process that holds the slot now
        self.tokens = base + "tokens"
        #: hash: slot -> JSON list of subscribed topics
        self.subs = base + "subs"
        #: hash: ``<topic>:<partition>`` -> ``<offset>:<metadata>``
        self.offsets = base + "offsets"
        #: channel: membership or leases changed
        self.channel = base + "c"

    def lease(self, tp: TopicPartition) -> str:
        """String ``<epoch>|<slot>|<token>`` naming the partition's owner (``<epoch>||`` free)."""
        return f"{self._base}lease:{tp.topic}:{tp.partition}"

    def state(self, partition: int) -> str:
        """Hash of the group's state entries for one partition."""
        return f"{self._base}state:{partition}"


def offset_field(tp: TopicPartition) -> str:
    """The field of ``tp`` in a group's offsets hash."""
    return f"{tp.topic}:{tp.partition}"


def parse_offset_field(field: str) -> TopicPartition:
    """The partition an offsets-hash field names."""
    topic, _, partition = field.rpartition(":")
    return TopicPartition(topic, int(partition))
