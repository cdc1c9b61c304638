"""Fixtures of the chart tier: the pinned helm binary with its state in a temporary home."""

from __future__ import annotations

import pytest

from tests.chart.helmcli import Helm, find_helm


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(find_helm(), tmp_path_factory.mktemp("helm-home"))
