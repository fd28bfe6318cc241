"""``memory://`` — the embedded, in-process store and the default.

Full semantics in one process: partitioned logs, consumer groups whose members split the
partitions (range assignment per topic, so equal partition numbers of co-partitioned topics go
to the same member), committed offsets with metadata, per-group state, and atomic commits made
in one lock-protected step, so readers never see part of a commit.

A rebalance works as Kafka's does: when members come or go, a partition that must move is first
revoked from its owner inside the owner's next ``poll`` (the owner may still commit for it),
then assigned to its new owner at the committed offset. A member that leaves hands its
partitions over at once, without committing.

Log entries are tuples of plain values (bytes, strings, numbers, datetimes), which CPython's
garbage collector stops tracking, so a store holding millions of records does not slow every
full collection down; :class:`Record` objects are built only for what is read.

``memory:///path/to/file`` keeps the store in a file: loaded on open, written on close, and
locked against a second process meanwhile (for the CLI on the embedded store).
"""
