"""The second part of the generated project's fast tests (the app's from test_e* on, and the
reliability library's own, packages/*/tests), run as a user would, beside the first part
(test_generated_suite.py, which checks that the two cover every fast test)."""

from __future__ import annotations

import pytest
from test_generated_suite import fast_parts, make_test, project

__all__ = ["project"]  # the fixture: this module generates a project of its own


@pytest.mark.fast
def test_generated_fast_tests_second_part_pass(project):
    path, env = project
    out = make_test(path, env, "not slow", *fast_parts(path)[1])
    peak = [line for line in out.splitlines() if "in flight" in line]  # test_stack.py's
    assert peak, "the concurrency test did not report its figures"
    print(peak[0].strip("."))
