"""The ``kafka://`` backend: Apache Kafka through confluent-kafka (docs/DESIGN.md §3).

- :mod:`~blackboard.stores.kafka.store` — :class:`KafkaStore`: topics, publishing, groups,
  ``join``.
- :mod:`~blackboard.stores.kafka.reads` — the store's reads of what is committed: records,
  last stable offsets, committed offsets read with ``require_stable``, state restores.
- :mod:`~blackboard.stores.kafka.member` — :class:`KafkaMember`: a ``read_committed`` consumer,
  its polls, rebalance callbacks and positions.
- :mod:`~blackboard.stores.kafka.transactions` — the worker slot's transactional producer; one
  commit is one transaction (retries, aborts, fencing).
- :mod:`~blackboard.stores.kafka.watchdog` — the thread a producer's blocking calls run on, and
  when one counts as wedged.
- :mod:`~blackboard.stores.kafka.settings` — the one place librdkafka keys are produced.
- :mod:`~blackboard.stores.kafka.errors` — librdkafka errors translated into ours.

Nothing is imported here, so reading the settings does not load confluent-kafka.
"""
