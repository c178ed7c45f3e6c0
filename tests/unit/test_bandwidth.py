import threading

from imgcloud.bandwidth import RateLimiter, mbps_to_bytes_per_s


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def test_unlimited_never_waits() -> None:
    t = FakeTime()
    limiter = RateLimiter(lambda: None, clock=t.clock, sleep=t.sleep)
    assert sum(limiter.acquire(10_000_000) for _ in range(10)) == 0
    assert t.now == 100.0


def test_sustained_rate_is_held_to_the_limit() -> None:
    t = FakeTime()
    limiter = RateLimiter(lambda: 1_000_000.0, burst_s=0.0, clock=t.clock, sleep=t.sleep)
    for _ in range(50):
        limiter.acquire(200_000)  # 10 MB at 1 MB/s
    # the last upload may start at 9.8 s; 10 MB in ~10 s: never faster than the limit
    assert 9.7 <= t.now - 100.0 <= 10.0


def test_limit_changes_take_effect_at_once() -> None:
    t = FakeTime()
    rate = {"value": 1_000_000.0}
    limiter = RateLimiter(lambda: rate["value"], burst_s=0.0, clock=t.clock, sleep=t.sleep)
    limiter.acquire(1_000_000)
    rate["value"] = None  # type: ignore[assignment]  # limit lifted
    assert limiter.acquire(50_000_000) == 0


def test_idle_link_allows_a_short_burst_only() -> None:
    t = FakeTime()
    limiter = RateLimiter(lambda: 1_000_000.0, burst_s=0.5, clock=t.clock, sleep=t.sleep)
    t.now += 3600  # idle for an hour: credit does not pile up beyond the burst allowance
    waited = [limiter.acquire(250_000) for _ in range(4)]
    # 0.5 s of credit covers the first 500 kB and the next slot starts at once; the fourth
    # waits for the link, so 1 MB takes 0.25 s after its burst and no less
    assert waited == [0.0, 0.0, 0.0, 0.25]


def test_mbps_conversion() -> None:
    assert mbps_to_bytes_per_s(100) == 12_500_000
    assert mbps_to_bytes_per_s(None) is None
