"""The pytest hook that commits the reliability rows with their test's result.

`figures.record` stages rows while a test runs; the report of the test's call phase decides
whether they are written `passed` or `failed`. A failure in set-up (a bed that did not start)
is a `failed` row too. Rows staged later, by a module fixture's teardown (the sodctl fuzz counts
its invocations over the whole module), are `failed` if any test of that module failed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability import figures

_FAILED_MODULES: set[str] = set()


def _item_of(item: pytest.Item) -> str | None:
    fn = getattr(item, "function", None)
    return getattr(fn, "reliability_item", None) or getattr(
        getattr(item, "module", None), "RELIABILITY_ITEM", None
    )


def _first_line(report: pytest.TestReport) -> str:
    text = str(report.longreprtext or "").strip().splitlines()
    errors = [line for line in text if line.startswith("E ")]
    return " ".join((errors or text or ["(no message)"])[0].split())[:200]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    module = item.nodeid.split("::", 1)[0]
    if report.failed:
        _FAILED_MODULES.add(module)
    if report.when == "call" or (report.when == "setup" and report.failed):
        figures.commit(item.nodeid, report.passed, _first_line(report), _item_of(item))
    elif report.when == "teardown" and figures.pending():
        figures.commit(item.nodeid, module not in _FAILED_MODULES, _first_line(report))
