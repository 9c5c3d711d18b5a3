from service.security.ratelimit import RateLimiter, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_steady_rate_per_principal() -> None:
    clock = Clock()
    rl = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [rl.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rl.acquire("a")
    assert abs(wait - 0.5) < 1e-9
    assert rl.acquire("b") == 0.0  # another principal has its own bucket
    clock.now = 0.5
    assert rl.acquire("a") == 0.0 and rl.acquire("a") > 0
    clock.now = 100.0
    assert [rl.acquire("a") for _ in range(3)] == [0.0] * 3 and rl.acquire("a") > 0  # refills only to the burst


def test_refused_requests_are_not_charged() -> None:
    clock = Clock()
    rl = RateLimiter(rate=1.0, burst=1, clock=clock)
    assert rl.acquire("a") == 0.0
    for _ in range(10):
        assert rl.acquire("a") > 0
    clock.now = 1.0
    assert rl.acquire("a") == 0.0


def test_disabled_and_bounded_memory() -> None:
    assert RateLimiter(rate=0, burst=1).acquire("x") == 0.0
    clock = Clock()
    rl = RateLimiter(rate=1.0, burst=1, clock=clock, max_principals=10)
    for i in range(100):
        clock.now = i * 0.01
        rl.acquire(f"p{i}")
    assert len(rl._buckets) <= 10


def test_retry_after_rounds_up() -> None:
    assert retry_after_header(0.01) == "1" and retry_after_header(1.2) == "2" and retry_after_header(3.0) == "3"
