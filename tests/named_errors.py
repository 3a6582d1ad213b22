"""What every bad-input test asserts: the error names the bad argument, in one sentence."""

import re
from typing import Any, Callable

import pytest
import torch

# Tensors on two devices need a second device: these cases run where CUDA is, e.g. in a GPU run of the suite.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for a second device")


def assert_one_sentence(message: str) -> None:
    """One sentence: it ends with a full stop, and no full stop inside it is followed by a capital."""
    message = message.strip("'\"")  # a KeyError's message comes quoted
    assert message.endswith("."), message
    assert not re.search(r"[.!?]\s+[A-Z]", message[:-1]), f"more than one sentence: {message}"


def assert_names(call: Callable[[], Any], error: type[Exception], name: str) -> None:
    """`call()` raises `error` whose message mentions `name`, in one sentence."""
    with pytest.raises(error, match=re.escape(name)) as raised:
        call()
    assert_one_sentence(str(raised.value))
