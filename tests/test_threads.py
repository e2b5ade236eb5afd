"""The order-keeping thread map of the engine: results in order, and no call left running once it is closed."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from optimum_wc.engine.threads import in_order


def test_results_come_in_the_order_of_the_items():
    assert list(in_order(lambda x: x * x, range(10))) == [(i, i * i) for i in range(10)]


def test_closing_early_waits_for_the_running_calls():
    """An interrupt stops the caller after one item; the calls already on the pool read memory the caller frees
    next (a checkpoint's map, the placeholders' buffer), so closing must wait for them (the CI run crashed with a
    segmentation fault when it did not)."""
    running, finished = set(), set()
    lock = threading.Lock()

    def slow(i):
        with lock:
            running.add(i)
        time.sleep(0.3)
        with lock:
            finished.add(i)
        return i

    with contextlib.closing(in_order(slow, range(10))) as results:
        assert next(results) == (0, 0)
    with lock:
        assert running and running == finished, (running, finished)  # nothing still running after close()
    assert max(running) <= 3  # at most `ahead` items beyond the one handled were started


def test_an_error_in_the_caller_leaves_no_call_running():
    running, finished = [], []

    def slow(i):
        running.append(i)
        time.sleep(0.2)
        finished.append(i)
        return i

    with contextlib.suppress(KeyboardInterrupt), contextlib.closing(in_order(slow, range(10))) as results:
        for _ in results:
            raise KeyboardInterrupt
    assert sorted(running) == sorted(finished)


def test_an_interrupt_while_waiting_for_a_result_keeps_that_item_pending():
    """Ctrl-C most often lands while the caller waits for the next layer, which is still running then: it must stay
    pending, so that closing the map waits for it too (a real signal is not sent in the test process: see
    test_interrupt_stages)."""
    from collections import deque

    from optimum_wc.engine.threads import _first_result

    class Waiting:  # a running call's future, its wait interrupted
        def result(self):
            raise KeyboardInterrupt

    pending = deque([("item", Waiting())])
    with pytest.raises(KeyboardInterrupt):
        _first_result(pending)
    assert [item for item, _ in pending] == ["item"]
