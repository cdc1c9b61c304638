"""`sodctl sandbox` comes from the separately installed test bed; without it, a clear message."""

from __future__ import annotations

import pytest
from sod_operator.cli import cluster_commands, main


def test_sandbox_without_testbed_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cluster_commands, "entry_points", lambda group: [])
    code = main.main(["sandbox", "up", "--nodes", "plain=1"])
    err = capsys.readouterr().err
    assert code == main.EXIT_USAGE
    assert err.count("\n") == 1
    assert "make venv" in err
    assert "Traceback" not in err


def test_sandbox_registered_by_the_testbed_entry_point() -> None:
    names = {ep.name for ep in cluster_commands.entry_points(group=cluster_commands.PLUGIN_GROUP)}
    assert "sandbox" in names
