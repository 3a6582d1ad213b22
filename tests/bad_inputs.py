"""What every bad-input test asserts: the error's type, the argument it names, and one sentence."""

import re
from contextlib import contextmanager
from typing import Iterator

import pytest
import torch


def assert_one_sentence(message: str) -> None:
    assert message.endswith("."), f"the message does not end a sentence: {message!r}"
    assert not re.search(r"[.!?]\s+[A-Z]", message), f"the message is more than one sentence: {message!r}"


@contextmanager
def raises_one_sentence(error: type[Exception], match: str) -> Iterator[None]:
    with pytest.raises(error, match=match) as info:
        yield
    assert_one_sentence(str(info.value))


# Tensors on two devices need a second device: these cases run where CUDA is, e.g. in a GPU run of the suite.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for a second device")
