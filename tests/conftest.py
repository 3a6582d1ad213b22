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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run each notebook once: those the browser test runs in JupyterLab are not run again by nbval.

    Only when the browser test is collected and Chromium is there; otherwise nbval runs them.
    """
    browser_tests = [item for item in items if item.path.name == "test_browser.py"]
    if not browser_tests or not browser_tests[0].module.browser_available():
        return
    module = browser_tests[0].module
    in_browser = {module.ROOT / "solutions" / notebook for notebook in module.BROWSER_NOTEBOOKS}
    deselected = [item for item in items if item.path in in_browser]
    config.hook.pytest_deselected(items=deselected)
    items[:] = [item for item in items if item.path not in in_browser]
