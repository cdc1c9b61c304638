"""A real software TPM per test: manufactured once per session with a local EK CA, copied.

Copies share the EK (a clone of one manufactured state), which these tests do not need to
be unique; `fresh_tpm` manufactures a distinct one when it matters. swtpm and tpm2-pytss
are required (tools/install-system-deps.sh, `make venv`): a missing binary fails loudly.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sod_testbed import swtpm

os.environ.setdefault("TSS2_LOG", "all+none")  # ESYS logs expected misses as errors


@pytest.fixture(scope="session")
def local_ca(tmp_path_factory: pytest.TempPathFactory) -> swtpm.LocalCa:
    swtpm.require_binaries()
    return swtpm.LocalCa(tmp_path_factory.mktemp("ekca"))


@pytest.fixture(scope="session")
def manufactured(tmp_path_factory: pytest.TempPathFactory, local_ca: swtpm.LocalCa) -> Path:
    state = tmp_path_factory.mktemp("manufactured") / "state"
    swtpm.manufacture(state, local_ca)
    return state


@pytest.fixture
def start_tpm(tmp_path: Path) -> Iterator[Callable[[Path], swtpm.Swtpm]]:
    """Starts a software TPM on a copy of a manufactured state and boots it (the simulated
    firmware's measurements); every TPM it started stops after the test."""
    running: list[swtpm.Swtpm] = []

    def start(manufactured: Path) -> swtpm.Swtpm:
        state = tmp_path / f"tpm{len(running) or ''}"
        shutil.copytree(manufactured, state)
        sw = swtpm.Swtpm(state)
        sw.start()
        running.append(sw)
        swtpm.simulated_boot(sw.tcti, "hyperwall")
        return sw

    yield start
    for sw in running:
        sw.stop()


@pytest.fixture
def tpm(manufactured: Path, start_tpm: Callable[[Path], swtpm.Swtpm]) -> swtpm.Swtpm:
    return start_tpm(manufactured)


@pytest.fixture
def fresh_tpm(
    tmp_path: Path, local_ca: swtpm.LocalCa, start_tpm: Callable[[Path], swtpm.Swtpm]
) -> swtpm.Swtpm:
    state = tmp_path / "fresh"
    swtpm.manufacture(state, local_ca)
    return start_tpm(state)
