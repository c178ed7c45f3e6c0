"""The plugins' background-loop base: a notify is answered at once, stop ends the loop within
its bound, a failing round backs off instead of spinning or dying, and with a lease only
the holder works and the lease is given up at the end."""

from __future__ import annotations

import threading
import time

from imgcloud.worker import Worker, stop_all


class Counting(Worker):
    name = "test-counting"

    def __init__(self, *, every_s: float = 60.0, lease: object = None, fail: int = 0) -> None:
        super().__init__(every_s=every_s, lease=lease, backoff_max_s=0.4)  # type: ignore[arg-type]
        self.rounds = 0
        self.counted = threading.Condition()
        self.backlog = 0  # work() says "more" while this is above zero
        self.fail = fail  # the first `fail` rounds raise

    def work(self) -> bool:
        with self.counted:
            self.rounds += 1
            self.counted.notify_all()
        if self.fail:
            self.fail -= 1
            raise RuntimeError("a bug in one round")
        if self.backlog:
            self.backlog -= 1
            return True
        return False

    def wait_rounds(self, at_least: int, timeout_s: float = 5) -> bool:
        """Until `at_least` rounds have run (False after `timeout_s`)."""
        with self.counted:
            return self.counted.wait_for(lambda: self.rounds >= at_least, timeout_s)


class FakeLease:
    def __init__(self, ours: bool) -> None:
        self.ours = ours
        self.released = 0
        self.asked = 0
        self.asking = threading.Condition()

    def hold(self) -> bool:
        with self.asking:
            self.asked += 1
            self.asking.notify_all()
        return self.ours

    def wait_asked(self, at_least: int) -> bool:
        with self.asking:
            return self.asking.wait_for(lambda: self.asked >= at_least, 5)

    def release(self) -> None:
        self.released += 1


def test_notify_wakes_the_loop_long_before_its_period() -> None:
    worker = Counting(every_s=60)
    worker.start()
    try:
        assert worker.wait_rounds(1)
        started = time.monotonic()
        worker.notify()
        assert worker.wait_rounds(2)
        assert time.monotonic() - started < 5  # not the 60 s period
    finally:
        assert worker.stop(join_s=5)


def test_more_waiting_runs_the_next_round_without_a_pause() -> None:
    worker = Counting(every_s=60)
    worker.backlog = 5
    worker.start()
    try:
        assert worker.wait_rounds(6)
        assert worker.rounds == 6  # and then it sleeps its period
    finally:
        assert worker.stop(join_s=5)


def test_stop_waits_for_the_round_and_is_bounded() -> None:
    entered, release = threading.Event(), threading.Event()

    class Slow(Worker):
        name = "test-slow"

        def work(self) -> bool:
            entered.set()
            release.wait(10)
            return False

    worker = Slow(every_s=60)
    thread = worker.start()
    assert entered.wait(5)
    started = time.monotonic()
    assert not worker.stop(join_s=0.3)  # still inside its round: the wait is bounded
    assert time.monotonic() - started < 3
    release.set()
    assert worker.join(5)
    assert not thread.is_alive()


def test_a_failing_round_backs_off_and_the_loop_survives() -> None:
    worker = Counting(every_s=0.05, fail=3)
    worker.start()
    try:
        assert worker.wait_rounds(5, timeout_s=10)
        assert worker.failures == 0  # a good round resets the backoff
    finally:
        assert worker.stop(join_s=5)


def test_backoff_doubles_up_to_its_cap() -> None:
    worker = Counting(every_s=0.1)
    pauses = []
    for failures in range(6):
        worker.failures = failures
        pauses.append(worker.pause_s())
    assert pauses == [0.1, 0.1, 0.2, 0.4, 0.4, 0.4]


def test_without_the_lease_the_loop_does_not_work() -> None:
    lease = FakeLease(ours=False)
    worker = Counting(every_s=0.05, lease=lease)
    worker.start()
    assert lease.wait_asked(3)  # several rounds asked for the lease: none may have worked
    assert worker.rounds == 0
    lease.ours = True
    assert worker.wait_rounds(1)
    assert worker.stop(join_s=5)
    assert lease.released >= 1  # given up when the loop ends


def test_a_failing_round_gives_the_lease_up() -> None:
    lease = FakeLease(ours=True)
    worker = Counting(every_s=0.05, lease=lease, fail=1)
    worker.start()
    try:
        assert worker.wait_rounds(2)  # the failed round, then one after it
        assert lease.released >= 1
    finally:
        worker.stop(join_s=5)


class SlowToStop(Worker):
    """A loop whose round ends only `wind_down_s` after it is told to stop (a round inside
    a slow SDK call, as at Orthanc's shutdown)."""

    name = "test-slow-to-stop"

    def __init__(self, wind_down_s: float) -> None:
        super().__init__(every_s=60)
        self.wind_down_s = wind_down_s
        self.in_round = threading.Event()
        self.told = threading.Event()

    def ask_to_stop(self) -> None:
        self.told.set()
        super().ask_to_stop()

    def work(self) -> bool:
        self.in_round.set()
        self.told.wait(30)
        time.sleep(self.wind_down_s)
        return False


def started_slow(count: int, wind_down_s: float) -> list[SlowToStop]:
    """`count` loops, each inside its round."""
    workers = [SlowToStop(wind_down_s) for _ in range(count)]
    for worker in workers:
        worker.start()
    assert all(worker.in_round.wait(5) for worker in workers)
    return workers


def test_stop_all_waits_for_slow_loops_together() -> None:
    # one after another, four 1 s wind-downs take 4 s at least: each starts at its own stop
    workers = started_slow(4, wind_down_s=1.0)
    started = time.monotonic()
    assert stop_all(workers, join_s=10)
    assert time.monotonic() - started < 3.0
    assert not any(worker._thread and worker._thread.is_alive() for worker in workers)


def test_stop_all_keeps_one_deadline_for_all() -> None:
    # four loops that outlast it: 0.5 s in all, where a 0.5 s wait each would take 2 s
    workers = started_slow(4, wind_down_s=2.5)
    started = time.monotonic()
    assert not stop_all(workers, join_s=0.5)
    assert time.monotonic() - started < 1.6
    assert all(worker.join(10) for worker in workers)
