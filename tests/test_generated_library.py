"""The reliability library's own tests (packages/*/tests) in the generated project, run as a user
would, beside the app's fast tests (test_generated_suite.py checks the two cover them all)."""

from __future__ import annotations

import pytest
from test_generated_suite import LIBRARY_TESTS, make_test, project

__all__ = ["project"]  # the fixture: this module generates a project of its own


@pytest.mark.fast
def test_generated_library_tests_pass(project):
    path, env = project
    make_test(path, env, "not slow", *LIBRARY_TESTS)
