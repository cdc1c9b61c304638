"""Support for the reliability suite (issue 8): manifest generators and the figures recorder.

The tests themselves live in `tests/unit/test_sodctl_fuzz.py` and `tests/e2e/test_reliability_*.py`.
"""
