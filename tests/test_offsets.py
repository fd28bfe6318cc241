"""Out-of-order completion bookkeeping."""

from __future__ import annotations

import random

from blackboard.offsets import PartitionProgress, decode_finished, encode_finished
from blackboard.store import MAX_METADATA_CHARS


def test_metadata_round_trips_ranges_and_singletons() -> None:
    finished = {102, 103, 104, 107, 140, 141}
    text = encode_finished(100, finished)
    assert text == "bb1:2-4,7,14-15"
    assert decode_finished(100, text) == finished
    assert decode_finished(100, "") == set()
    assert decode_finished(100, "someone else's metadata") == set()


def test_commit_position_is_the_lowest_unfinished_offset() -> None:
    prog = PartitionProgress(10)
    for off in range(10, 15):
        assert prog.start(off)
    for off in (10, 12, 13):
        prog.finish(off)
    done = prog.position()
    assert done.offset == 11
    assert decode_finished(11, done.metadata) == {12, 13}


def test_restart_skips_offsets_finished_above_the_committed_one() -> None:
    first = PartitionProgress(0)
    for off in range(6):
        first.start(off)
    for off in (0, 2, 3, 5):
        first.finish(off)
    done = first.position()
    again = PartitionProgress(done.offset, done.metadata)
    ran = [off for off in range(1, 6) if again.start(off)]
    assert ran == [1, 4]
    again.finish(1)
    assert again.position().offset == 4
    again.finish(4)
    assert again.position().offset == 6


def test_gaps_in_offsets_do_not_stall_the_position() -> None:
    prog = PartitionProgress(0)
    for off in (0, 1, 5, 9):  # Kafka transaction markers take the missing offsets
        prog.start(off)
        prog.finish(off)
    assert prog.position().offset == 10


def test_metadata_stays_under_kafkas_limit_for_the_worst_window() -> None:
    rng = random.Random(1)
    base = 1_000_000
    finished = {base + 1 + i for i in range(0, 1000, 2)}  # alternate finished/unfinished
    finished |= {base + rng.randrange(1, 1000) for _ in range(100)}
    assert len(encode_finished(base, finished)) < MAX_METADATA_CHARS
