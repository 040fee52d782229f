import pytest

from olol.store import DatabaseManager


class FakeClock:
    """A settable clock for timestamps (seconds since the epoch)."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture(params=["memory", "durable"])
def db(request, tmp_path, clock):
    """The contract suite runs against both implementations."""
    if request.param == "memory":
        store = DatabaseManager.memory(clock=clock)
    else:
        store = DatabaseManager(tmp_path / "data", clock=clock)
    yield store
    store.close()
