import hashlib
import threading
from pathlib import Path

import pytest
from imgcloud.delivery import StudyDelivery, Verification, verify_against
from imgcloud.errors import ForwardingError
from imgcloud.forward_queue import ForwardQueue
from imgcloud.forwarding import QueueWorker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> ForwardQueue:
    return ForwardQueue(tmp_path / "q.sqlite", retry_max_s=30, clock=clock)


def test_queue_survives_reopening_and_resumes_a_study_left_sending(
    tmp_path: Path, clock: Clock
) -> None:
    q = ForwardQueue(tmp_path / "q.sqlite", clock=clock)
    q.enqueue("s1")
    q.mark_sending("s1")
    q.close()  # as if the edge were killed mid-forward
    reopened = ForwardQueue(tmp_path / "q.sqlite", clock=clock)
    assert reopened.next_due() == "s1"
    assert reopened.status("s1").state == "sending"  # type: ignore[union-attr]


def test_failures_back_off_with_a_cap_and_keep_the_reason(
    queue: ForwardQueue, clock: Clock
) -> None:
    queue.enqueue("s1")
    delays = [queue.mark_failed("s1", "central unreachable") for _ in range(7)]
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    status = queue.status("s1")
    assert status is not None and status.state == "failed"
    assert status.last_error == "central unreachable" and status.attempts == 7
    assert queue.next_due() is None
    clock.now += 30
    assert queue.next_due() == "s1"


def test_delivered_study_is_requeued_when_new_instances_arrive(queue: ForwardQueue) -> None:
    queue.enqueue("s1")
    queue.mark_delivered("s1", instances=3, bytes_sent=300)
    assert queue.next_due() is None
    queue.enqueue("s1")
    assert queue.next_due() == "s1"
    queue.mark_delivered("s1", instances=4, bytes_sent=100)
    assert queue.status("s1").bytes_sent == 400  # type: ignore[union-attr]


def test_counters(queue: ForwardQueue, clock: Clock) -> None:
    for study in ("a", "b", "c"):
        queue.enqueue(study)
    queue.mark_delivered("a", 2, 2048)
    queue.mark_failed("b", "timeout")
    counters = queue.counters()
    assert counters == {
        "queue_depth": 2,
        "failing": 1,
        "delivered_studies": 1,
        "bytes_sent": 2048,
        "last_success": clock.now,
    }


def fake_central() -> tuple[dict[str, bytes], StudyDelivery]:
    files = {"i1": b"one", "i2": b"two", "i3": b"three"}
    sops = {"i1": "1.1", "i2": "1.2", "i3": "1.3"}
    central: dict[str, bytes] = {}
    state = {"corrupt_next": {"1.2"}}

    def send(items: list[tuple[str, bytes | None]]) -> int:
        sent = 0
        for iid, held in items:
            data = held if held is not None else files[iid]
            sent += len(data)
            if sops[iid] in state["corrupt_next"]:
                state["corrupt_next"].discard(sops[iid])
                data = b"X" + data[1:]  # corrupted in transit, once
            central.setdefault(sops[iid], data)  # central stores an SOP instance once
        return sent

    def verify(hashes: dict[str, str]) -> Verification:
        def recorded(sop: str) -> str | None:
            data = central.get(sop)
            return hashlib.sha256(data).hexdigest() if data is not None else None

        return verify_against(recorded, hashes, lambda sop: central.__delitem__(sop))

    delivery = StudyDelivery(
        list_instances=lambda _s: list(sops.items()),
        read_instance=files.__getitem__,
        send=send,
        verify=verify,
    )
    return central, delivery


def test_corrupted_instance_is_detected_and_resent() -> None:
    central, delivery = fake_central()
    instances, sent = delivery.deliver("study")
    assert instances == 3
    assert central == {"1.1": b"one", "1.2": b"two", "1.3": b"three"}
    assert sent == len(b"one") + len(b"two") + len(b"three") + len(b"two")


def test_never_confirmed_study_raises_after_bounded_rounds() -> None:
    delivery = StudyDelivery(
        list_instances=lambda _s: [("i1", "1.1")],
        read_instance=lambda _i: b"data",
        send=lambda _items: 0,
        verify=lambda h: Verification(missing=set(h)),
        rounds=2,
    )
    with pytest.raises(ForwardingError, match="1 of 1 instances not confirmed"):
        delivery.deliver("study")


def test_verify_against_reports_each_kind() -> None:
    stored = {"a": hashlib.sha256(b"A").hexdigest(), "b": hashlib.sha256(b"B").hexdigest()}
    discarded: list[str] = []
    claimed = {
        "a": hashlib.sha256(b"A").hexdigest(),
        "b": hashlib.sha256(b"other").hexdigest(),
        "c": hashlib.sha256(b"C").hexdigest(),
    }
    result = verify_against(stored.get, claimed, discarded.append)
    assert (result.confirmed, result.mismatched, result.missing) == ({"a"}, {"b"}, {"c"})
    assert discarded == ["b"]


def test_worker_records_success_and_failure(queue: ForwardQueue, clock: Clock) -> None:
    calls: list[str] = []

    def deliver(study_id: str) -> tuple[int, int]:
        calls.append(study_id)
        if len(calls) == 1:
            raise ForwardingError("central down")
        return 5, 500

    worker = QueueWorker(queue, deliver)
    queue.enqueue("s1")
    assert worker.run_once()
    assert queue.status("s1").state == "failed"  # type: ignore[union-attr]
    assert not worker.run_once()  # backing off
    clock.now += 1
    assert worker.run_once()
    assert queue.status("s1").state == "delivered"  # type: ignore[union-attr]


def test_only_what_central_lacks_is_sent() -> None:
    central, delivery = fake_central()
    central["1.1"] = b"one"  # already there: a resumed study, or one fetched from central
    sent_ids: list[list[str]] = []
    original_send = delivery.send

    def recording_send(items: list[tuple[str, bytes | None]]) -> int:
        sent_ids.append([iid for iid, _ in items])
        return original_send(items)

    delivery.send = recording_send  # type: ignore[method-assign]
    instances, _sent = delivery.deliver("study")
    assert instances == 3
    assert sent_ids[0] == ["i2", "i3"]
    assert central == {"1.1": b"one", "1.2": b"two", "1.3": b"three"}


def test_study_central_already_holds_is_not_sent_again() -> None:
    central, delivery = fake_central()
    central.update({"1.1": b"one", "1.2": b"two", "1.3": b"three"})
    delivery.send = lambda items: pytest.fail(f"sent {items} although central holds them")  # type: ignore[method-assign]
    assert delivery.deliver("study") == (3, 0)


def test_instances_read_for_hashing_are_sent_without_a_second_read() -> None:
    central, delivery = fake_central()
    rounds: list[list[tuple[str, bool]]] = []
    original_send = delivery.send

    def recording_send(items: list[tuple[str, bytes | None]]) -> int:
        rounds.append([(iid, held is not None) for iid, held in items])
        return original_send(items)

    delivery.send = recording_send  # type: ignore[method-assign]
    delivery.deliver("study")
    # first round: the bytes read for hashing go out as they are; the resend of the
    # instance corrupted in transit ("i2") reads it again, as held bytes may be the fault
    assert rounds == [[("i1", True), ("i2", True), ("i3", True)], [("i2", False)]]
    assert central == {"1.1": b"one", "1.2": b"two", "1.3": b"three"}


def test_large_studies_are_not_held_in_memory() -> None:
    _central, delivery = fake_central()
    delivery.keep_bytes = 4  # room for "one" only
    held: list[bool] = []
    original_send = delivery.send

    def recording_send(items: list[tuple[str, bytes | None]]) -> int:
        held.extend(data is not None for _, data in items)
        return original_send(items)

    delivery.send = recording_send  # type: ignore[method-assign]
    delivery.deliver("study")
    assert held[:3] == [True, False, False]


def test_instances_are_read_several_at_a_time_and_hashed_in_order() -> None:
    """Reading may compress (the edge's encoder processes): `readers` reads run at once,
    and each hash still belongs to its own instance."""
    central, delivery = fake_central()
    delivery.readers = 3
    files = {"i1": b"one", "i2": b"two", "i3": b"three"}
    inside = {"now": 0, "most": 0}
    lock = threading.Lock()
    all_in = threading.Barrier(3, timeout=10)  # fails unless three reads overlap

    def slow_read(iid: str) -> bytes:
        with lock:
            inside["now"] += 1
            inside["most"] = max(inside["most"], inside["now"])
        all_in.wait()
        with lock:
            inside["now"] -= 1
        return files[iid]

    delivery.read_instance = slow_read
    assert delivery.deliver("study") == (3, 3 + 3 + 5 + 3)
    assert inside["most"] == 3
    assert central == {"1.1": b"one", "1.2": b"two", "1.3": b"three"}


def test_streamed_study_is_hashed_once_and_only_new_instances_go(
    queue: ForwardQueue,
) -> None:
    """Rounds as instances keep arriving: confirmed ones are neither read nor sent again."""
    central, delivery = fake_central()
    delivery.cache = queue
    everything = delivery.list_instances("s")
    arrived = everything[:1]
    delivery.list_instances = lambda _s: list(arrived)  # type: ignore[method-assign]
    reads: list[str] = []
    original_read = delivery.read_instance

    def counting_read(iid: str) -> bytes:
        reads.append(iid)
        return original_read(iid)

    delivery.read_instance = counting_read  # type: ignore[method-assign]
    assert delivery.deliver("s") == (1, 3)
    arrived.extend(everything[1:])
    instances, _ = delivery.deliver("s")  # "1.2" is corrupted in transit once, and resent
    assert instances == 3 and sorted(reads) == ["i1", "i2", "i3"]
    assert delivery.deliver("s") == (3, 0)  # all confirmed: nothing read, nothing sent
    assert sorted(reads) == ["i1", "i2", "i3"]
    assert central == {"1.1": b"one", "1.2": b"two", "1.3": b"three"}
    queue.forget_instance("i3")  # re-stored here, perhaps with other bytes: hashed again
    delivery.deliver("s")
    assert sorted(reads) == ["i1", "i2", "i3", "i3"]


def test_instance_arriving_while_sending_sends_the_study_again(queue: ForwardQueue) -> None:
    queue.enqueue("s1")
    queue.mark_sending("s1")
    queue.enqueue("s1")  # a new instance arrived meanwhile
    queue.mark_delivered("s1", 1, 10)
    assert queue.status("s1").state == "queued"  # type: ignore[union-attr]
    assert queue.next_due() == "s1"
    queue.mark_sending("s1")
    queue.mark_delivered("s1", 2, 10)
    assert queue.status("s1").state == "delivered"  # type: ignore[union-attr]


def test_arrivals_do_not_cut_short_the_backoff_of_a_failing_study(
    queue: ForwardQueue, clock: Clock
) -> None:
    queue.enqueue("s1")
    queue.mark_failed("s1", "central down")
    queue.enqueue("s1")  # instances keep streaming in during the outage
    assert queue.next_due() is None
    clock.now += 1
    assert queue.next_due() == "s1"


def test_study_still_arriving_is_partial_until_stable_and_survives_a_restart(
    tmp_path: Path, clock: Clock
) -> None:
    queue = ForwardQueue(tmp_path / "q.sqlite", clock=clock)
    stable = {"s1": False}
    worker = QueueWorker(queue, lambda _s: (2, 20), is_stable=lambda s: stable[s])
    queue.enqueue("s1")
    assert worker.run_once()
    status = queue.status("s1")
    assert status is not None and status.state == "partial"
    assert queue.counters()["queue_depth"] == 1  # still in progress for monitoring
    assert queue.next_due() is None  # waits for more instances or the stable event
    queue.close()
    restarted = ForwardQueue(tmp_path / "q.sqlite", clock=clock)
    worker = QueueWorker(restarted, lambda _s: (3, 10), is_stable=lambda s: True)
    restarted.requeue_partial()  # done by start()
    assert worker.run_once()
    assert restarted.status("s1").state == "delivered"  # type: ignore[union-attr]


def test_stop_waits_for_the_study_being_sent(queue: ForwardQueue) -> None:
    """Orthanc is stopping: the worker may be inside an SDK call; stop() lets it finish its
    step (bounded) instead of leaving it running while Orthanc tears down."""
    entered, stopping = threading.Event(), threading.Event()

    def deliver(study_id: str) -> tuple[int, int]:
        entered.set()
        stopping.wait(10)
        return 3, 300

    worker = QueueWorker(queue, deliver)
    queue.enqueue("s1")
    thread = worker.start()
    assert entered.wait(10)
    stopping.set()
    worker.stop(join_s=10)
    assert not thread.is_alive()
    assert queue.status("s1").state == "delivered"  # type: ignore[union-attr]
