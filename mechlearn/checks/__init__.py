"""Exercise checks: call a learner's function and compare what it returns with the answer.

The shared machinery lives in `mechlearn.checks.core` and is re-exported here.
Chapter-specific checks live in `mechlearn.checks.chNN` modules, e.g.
`from mechlearn.checks.ch01 import check_layer_norm`; they are not imported here, so
importing one chapter's checks never loads another's.
"""

from __future__ import annotations

from mechlearn.checks.core import CheckFailed, call_learner, call_learner_read_only, check, expect, expect_tensor

__all__ = ["CheckFailed", "call_learner", "call_learner_read_only", "check", "expect", "expect_tensor"]
