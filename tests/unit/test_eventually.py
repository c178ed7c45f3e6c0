"""eventually(): returns the first truthy answer, retries through exceptions, and fails
naming what it waited for and what it last saw."""

from __future__ import annotations

import time

import pytest

from ..support.eventually import eventually


def counter(answers: list[object]):
    calls = iter(answers)

    def fn() -> object:
        answer = next(calls)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return fn


def test_returns_the_first_truthy_value() -> None:
    fn = counter([None, 0, [], {"state": "delivered"}])
    assert eventually(fn, what="delivered", interval=0.001) == {"state": "delivered"}


def test_an_exception_is_not_yet_and_the_value_after_it_counts() -> None:
    fn = counter([ConnectionError("refused"), AssertionError("not yet"), "ok"])
    assert eventually(fn, what="up", interval=0.001) == "ok"


def test_a_falsy_value_until_the_deadline_fails_naming_what_and_the_last_value() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError) as caught:
        eventually(lambda: {"state": "pending"} and [], what="the push delivered", timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 1.0
    message = str(caught.value)
    assert message.startswith("the push delivered: not within 0.2 s")
    assert "last value: []" in message


def test_an_exception_until_the_deadline_is_named_and_chained() -> None:
    def refuse() -> None:
        raise ConnectionError("central refused")

    with pytest.raises(AssertionError) as caught:
        eventually(refuse, what="central answers", timeout=0.1, interval=0.02)
    assert "last error: ConnectionError: central refused" in str(caught.value)
    assert isinstance(caught.value.__cause__, ConnectionError)


def test_it_tries_at_least_once_and_again_at_the_deadline() -> None:
    calls: list[float] = []

    def slow_false() -> bool:
        calls.append(time.monotonic())
        return False

    with pytest.raises(AssertionError, match=r"\(2 tries;"):
        eventually(slow_false, what="x", timeout=0.05, interval=10)
    assert len(calls) == 2  # the sleep is cut to the deadline, then one last try


def test_a_base_exception_is_not_swallowed() -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        eventually(interrupted, what="x", timeout=1)
