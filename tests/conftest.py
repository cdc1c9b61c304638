"""Hooks for every tier: reliability figures are committed with their test's result."""

from tests.reliability.plugin import pytest_runtest_makereport

__all__ = ["pytest_runtest_makereport"]
