"""The :class:`Blackboard`: a store, a type registry and the topic naming, used together.

It is what scripts, notebooks and the CLI use to publish artifacts from outside agents, read
them back and look at lag; workers use it to find their topics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from blackboard.artifacts import (
    DEFAULT_TENANT,
    Artifact,
    ArtifactType,
    Envelope,
    TypeRegistry,
    default_registry,
    make_envelope,
)
from blackboard.envsettings import EnvSettings
from blackboard.errors import ConfigError, DeliveryUnknownError
from blackboard.publishing import HookFactory, Publish, PublishHook, make_hooks
from blackboard.records import OutgoingRecord, Record, TopicPartition
from blackboard.store import LagRow, Store
from blackboard.stores import DEFAULT_URL, open_store
from blackboard.topics import TopicNames
from blackboard.wire import decode, encode_headers, encode_payload

H = TypeVar("H", bound=PublishHook)


class BlackboardSettings(EnvSettings):
    """Where the blackboard lives and how its topics are laid out.

    :meth:`from_env` reads ``BLACKBOARD_URL``, ``BLACKBOARD_PREFIX`` and
    ``BLACKBOARD_PARTITIONS``; explicit values win (:mod:`blackboard.envsettings`). How
    publishers throttle on lag is a publish hook's own setting
    (:class:`~scheduler.throttle.BackpressureSettings`, ``BLACKBOARD_BACKPRESSURE*``).
    """

    model_config = SettingsConfigDict(env_prefix="BLACKBOARD_")

    url: str = Field(
        default=DEFAULT_URL,
        description="the store: `memory://[/path]`, `kafka://host:port[,host:port]`, "
        "`redis://[user:password@]host:port/db`",
    )
    prefix: str = Field(
        default="bb", pattern=r"^[A-Za-z0-9._-]+$", description="topic and group name prefix"
    )
    partitions: int = Field(
        default=8, ge=1, le=10_000, description="partitions of every artifact topic"
    )


class Blackboard:
    """A blackboard: typed artifacts on a partitioned store.

    Args:
        store: a store URL (``memory://``, ``kafka://host:port``, ``redis://host:port/0``) or an
            open :class:`Store`; default from settings.
        registry: the artifact types known here (default: everything ``@artifact`` registered).
        settings: prefix and partition count; default from the environment.
        hooks: makers of publish hooks (:mod:`blackboard.publishing`) beside those the
            installed packages declare (backpressure from the environment when ``settings``
            come from it too, and send spans); one of a class stands in for the installed.

    Raises:
        ConfigError: a setting or a publish hook's setting is invalid.
    """

    def __init__(
        self,
        store: Store | str | None = None,
        *,
        registry: TypeRegistry | None = None,
        settings: BlackboardSettings | None = None,
        hooks: Sequence[HookFactory] = (),
    ) -> None:
        url = store if isinstance(store, str) else store.url if isinstance(store, Store) else None
        if settings is None:
            settings = BlackboardSettings.from_env(url=url)
        elif url is not None and url != settings.url:
            settings = settings.model_copy(update={"url": url})  # an explicit store wins
        self.settings = settings
        #: Whether the settings came from the environment (publish hooks then read theirs
        #: from it too).
        self.settings_from_env = settings.read_env
        self.store = store if isinstance(store, Store) else open_store(self.settings.url)
        self.registry = registry or default_registry
        self.topics = TopicNames(self.settings.prefix)
        self._ready: set[str] = set()
        #: What happens around each publish besides the store call, in order.
        self.publish_hooks = make_hooks(self, hooks)

    def hook(self, kind: type[H]) -> H | None:
        """This blackboard's publish hook of type ``kind``, if it has one."""
        return next((h for h in self.publish_hooks if isinstance(h, kind)), None)

    # -- topics ---------------------------------------------------------------------------
    def topic(self, art_type: ArtifactType | type[BaseModel] | str) -> str:
        """The topic of an artifact type (given as type, model or name)."""
        name = (
            art_type.name if isinstance(art_type, ArtifactType) else self.registry.of(art_type).name
        )
        return self.topics.for_type(name)

    def ensure_topics(self, types: Sequence[ArtifactType]) -> None:
        """Create the topics (and dead-letter topics) of ``types`` that do not exist yet."""
        wanted = {self.topics.for_type(t.name) for t in types} - self._ready
        if not wanted:
            return
        self.store.ensure_topics(
            wanted | {TopicNames.dlq(t) for t in wanted}, self.settings.partitions
        )
        self._ready |= wanted

    # -- publishing -----------------------------------------------------------------------
    def publish(
        self,
        payload: BaseModel,
        *,
        correlation_id: str | None = None,
        partition_key: str | None = None,
        tenant: str = DEFAULT_TENANT,
        causation_ids: Sequence[str] = (),
        artifact_id: str | None = None,
    ) -> Envelope:
        """Publish one artifact from outside any agent; returns its envelope.

        ``artifact_id`` makes publishing idempotent for consumers that dedupe on ids.

        Raises:
            UnknownTypeError: the payload's model is not a registered type.
            InvalidArtifactError: the payload does not validate (with the field errors).
        """
        return self.publish_many(
            [payload],
            correlation_id=correlation_id,
            partition_key=partition_key,
            tenant=tenant,
            causation_ids=causation_ids,
            artifact_ids=[artifact_id] if artifact_id else None,
        )[0]

    def publish_many(
        self,
        payloads: Sequence[BaseModel],
        *,
        correlation_id: str | None = None,
        partition_key: str | None = None,
        tenant: str = DEFAULT_TENANT,
        causation_ids: Sequence[str] = (),
        artifact_ids: Sequence[str] | None = None,
        partition_keys: Sequence[str] | None = None,
    ) -> list[Envelope]:
        """Publish several artifacts in one call (each its own correlation id unless given).

        ``partition_keys`` gives each payload its own partition key (``partition_key`` one
        for all; by default each record's correlation id). ``artifact_ids`` fixes the ids, so
        a publish repeated after a :class:`DeliveryUnknownError` repeats the same ids.

        With backpressure on, waits while the consumers of the target types are behind
        (Ctrl-C interrupts the wait).

        Raises:
            ConfigError: ``partition_keys`` or ``artifact_ids`` not one per payload, or both
                ``partition_key`` and ``partition_keys``.
            DeliveryUnknownError: some records may or may not be written (their ids are on
                the error's ``artifact_ids``): the store neither confirmed nor refused them.
            StoreClosedError: the blackboard was closed while the publish was throttled.
        """
        for name, given in (("partition_keys", partition_keys), ("artifact_ids", artifact_ids)):
            if given is not None and len(given) != len(payloads):
                raise ConfigError(f"{name}: {len(given)} given for {len(payloads)} payloads")
        if partition_keys is not None and partition_key is not None:
            raise ConfigError("give partition_key or partition_keys, not both")
        envelopes: list[Envelope] = []
        records: list[OutgoingRecord] = []
        types: list[ArtifactType] = []
        hooks = self.publish_hooks
        publish = Publish(self, correlation_id, envelopes, records)
        for hook in hooks:
            hook.begin(publish)
        for i, payload in enumerate(payloads):
            art_type = self.registry.of(type(payload))  # the model validated when built
            env = make_envelope(
                art_type,
                artifact_id=artifact_ids[i] if artifact_ids else None,
                correlation_id=correlation_id,
                causation_ids=causation_ids,
                partition_key=partition_keys[i] if partition_keys is not None else partition_key,
                tenant=tenant,
                traceparent=_traceparent(publish.namers, publish) if publish.namers else None,
            )
            envelopes.append(env)
            types.append(art_type)
            records.append(self.record_for(env, payload))
        self.ensure_topics(types)
        for hook in hooks:
            hook.before_send(publish)  # backpressure may wait here
        error: BaseException | None = None
        try:
            self.store.publish(records)
        except DeliveryUnknownError as exc:
            exc.artifact_ids = tuple(envelopes[i].id for i in exc.unconfirmed)
            error = exc
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            for hook in reversed(hooks):
                hook.after_send(publish, error)
        return envelopes

    def publish_json(self, type_name: str, data: Any, **kwargs: Any) -> Envelope:
        """Validate plain data (e.g. parsed JSON) as ``type_name`` and publish it."""
        payload = self.registry.get(type_name).validate_payload(data)
        return self.publish(payload, **kwargs)

    def record_for(self, env: Envelope, payload: BaseModel) -> OutgoingRecord:
        """The wire record of an artifact (key = partition key, JSON value, ``bb.*`` headers)."""
        if self.store.keeps_envelopes:
            return OutgoingRecord(
                self.topics.for_type(env.type),
                env.partition_key.encode(),
                encode_payload(payload),
                envelope=env,
            )
        return OutgoingRecord(
            topic=self.topics.for_type(env.type),
            key=env.partition_key.encode(),
            value=encode_payload(payload),
            headers=encode_headers(env),
        )

    # -- reading --------------------------------------------------------------------------
    def records(self, type_name: str, *, start: int = 0, batch: int = 1000) -> Iterator[Record]:
        """Committed records of a type, partition by partition, from offset ``start`` on."""
        topic = self.topics.for_type(type_name)
        parts = self.store.topic_partitions(topic) or 0
        for p in range(parts):
            offset = start
            while True:
                chunk = self.store.read(TopicPartition(topic, p), offset, batch)
                yield from chunk
                if len(chunk) < batch:
                    break
                offset = chunk[-1].offset + 1

    def read(self, art_type: type[BaseModel] | str) -> Iterator[Artifact[BaseModel]]:
        """Every committed artifact of a type, decoded (records that do not decode raise).

        Raises:
            ArtifactError: a record does not decode or validate.
        """
        name = art_type if isinstance(art_type, str) else self.registry.of(art_type).name
        for record in self.records(name):
            yield decode(record, self.registry)

    def lag(self, groups: Sequence[str] | None = None) -> list[LagRow]:
        """Per group, topic and partition: end offset, committed offset, lag; of ``groups``,
        or by default of this blackboard's own groups (``<prefix>.*``), asked for by name:
        other blackboards' groups on a shared cluster are not ours, and the lag of every
        group costs a call per group."""
        if groups is None:
            head = self.topics.prefix + "."
            groups = [g for g in self.store.list_groups() if g.startswith(head)]
        return self.store.lag(groups) if groups else []

    def close(self) -> None:
        """Close the store (a publish waiting on backpressure fails)."""
        for hook in self.publish_hooks:
            hook.close()
        self.store.close()

    def __enter__(self) -> Blackboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _traceparent(hooks: Sequence[PublishHook], publish: Publish) -> str | None:
    """The next envelope's ``traceparent``: the first hook's that gives one."""
    for hook in hooks:
        found = hook.traceparent(publish)
        if found is not None:
            return found
    return None
