"""extraction/heap.py: the workers' garbage-collector settings."""

from __future__ import annotations

import gc

from extraction import heap


def test_settle_freezes_what_is_alive_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    kept = [[i] for i in range(1000)]  # alive now: frozen with the rest
    assert any(o is kept[0] for o in gc.get_objects())
    try:
        frozen = heap.settle(12_345)
        assert frozen >= 1000 and gc.get_freeze_count() >= 1000
        assert gc.get_threshold() == (12_345, before[1], before[2])
        assert not any(o is kept[0] for o in gc.get_objects())  # out of every generation's sight
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert gc.get_freeze_count() == 0


def test_a_threshold_of_zero_keeps_cpythons() -> None:
    before = gc.get_threshold()
    try:
        heap.settle(0)
        assert gc.get_threshold() == before
    finally:
        gc.unfreeze()
