"""The ``kafka://`` backend: Apache Kafka through confluent-kafka (docs/DESIGN.md §3).

- :mod:`~blackboard.stores.kafka.store` — :class:`KafkaStore`: topics, publishing, reads,
  last stable offsets, committed offsets read with ``require_stable``.
- :mod:`~blackboard.stores.kafka.member` — :class:`KafkaMember`: a ``read_committed`` consumer
  and the worker slot's transactional producer; one commit is one transaction.
- :mod:`~blackboard.stores.kafka.settings` — the one place librdkafka keys are produced.
- :mod:`~blackboard.stores.kafka.errors` — librdkafka errors translated into ours.

Nothing is imported here, so reading the settings does not load confluent-kafka.
"""
