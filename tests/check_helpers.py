"""Assertions shared by the tests of every chapter's checks."""

import pytest

from mechlearn.checks import CheckFailed


def expect_failure(check, learner, *args, hint_contains: str = "") -> str:
    """`check(learner, *args)` fails with '✗ label: …' and a hint containing `hint_contains`."""
    with pytest.raises(CheckFailed) as failure:
        check(learner, *args)
    message = str(failure.value)
    label = check.__name__.removeprefix("check_")
    assert message.startswith(f"✗ {label}: "), message
    assert "\nHint: " in message, message
    assert hint_contains in failure.value.hint, message
    return message
