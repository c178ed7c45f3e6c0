from imgcloud.errors import ForwardingError
from imgcloud.forwarding import StudyForwarder


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_sends_each_study_once() -> None:
    sent: list[str] = []
    fwd = StudyForwarder(send=sent.append)
    fwd.enqueue("s1")
    fwd.enqueue("s1")  # already waiting
    fwd.enqueue("s2")
    while fwd.run_once():
        pass
    assert sent == ["s1", "s2"]
    assert fwd.delivered == 2 and fwd.depth() == 0


def test_failure_is_retried_after_backoff() -> None:
    clock = FakeClock()
    attempts: list[str] = []

    def flaky(study_id: str) -> None:
        attempts.append(study_id)
        if len(attempts) < 3:
            raise ForwardingError("central unreachable")

    fwd = StudyForwarder(send=flaky, clock=clock, retry_max_s=10)
    fwd.enqueue("s1")
    assert fwd.run_once()  # fails, due again at t=1
    assert not fwd.run_once()  # not due yet
    clock.now = 1.0
    assert fwd.run_once()  # fails, due again at t=1+2
    clock.now = 2.5
    assert not fwd.run_once()
    clock.now = 3.0
    assert fwd.run_once()  # succeeds
    assert attempts == ["s1"] * 3
    assert (fwd.delivered, fwd.failures, fwd.depth()) == (1, 2, 0)


def test_backoff_is_capped() -> None:
    fwd = StudyForwarder(send=lambda _s: None, retry_max_s=30)
    assert [fwd.backoff(n) for n in (1, 2, 3, 6, 20)] == [1, 2, 4, 30, 30]
