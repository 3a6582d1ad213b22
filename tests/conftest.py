"""Fixtures every test file shares."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run many times faster on one thread, above all on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def raising_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """With MECHLEARN_CHECK_LOG set, failing checks print instead of raising; tests want them to raise."""
    monkeypatch.delenv("MECHLEARN_CHECK_LOG", raising=False)
