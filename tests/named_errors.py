"""What every bad-input test asserts: the error names the bad argument, in one sentence."""

import re
from typing import Any, Callable

import pytest


def assert_names(call: Callable[[], Any], error: type[Exception], name: str) -> None:
    """`call()` raises `error` whose message mentions `name` and is one sentence (no full stop followed by a capital)."""
    with pytest.raises(error, match=re.escape(name)) as raised:
        call()
    message = str(raised.value).strip("'\"")
    assert message.endswith("."), message
    assert not re.search(r"[.!?]\s+[A-Z]", message[:-1]), f"more than one sentence: {message}"
