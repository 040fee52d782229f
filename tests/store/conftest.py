import pytest

from olol.store import DatabaseManager
from tests.support import FakeClock  # noqa: F401


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
