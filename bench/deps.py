"""What each benchmark needs before it can run, checked without importing half-built code.

A missing module, binary or test-bed build becomes the reason of a "not-run" result, so a
benchmark never reports a number for something that was not measured.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterable


def missing_modules(modules: Iterable[str]) -> list[str]:
    out = []
    for name in modules:
        try:
            spec = importlib.util.find_spec(name)
            # A directory without __init__.py (a namespace package) is work in progress.
            found = spec is not None and spec.origin is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def missing_binaries(binaries: Iterable[str]) -> list[str]:
    return [b for b in binaries if shutil.which(b) is None]


def testbed_missing() -> str | None:
    """Why the local control plane cannot start, or None when its binaries are built."""
    if missing_modules(["sod_testbed.binaries"]):
        return "sod_testbed.binaries is not there yet"
    from sod_testbed.binaries import MissingBinaries, find_binaries

    try:
        find_binaries()
    except MissingBinaries as err:
        return f"test bed not built: {err}"
    return None


def reason(
    modules: Iterable[str] = (), binaries: Iterable[str] = (), testbed: bool = False
) -> str | None:
    """A one-line reason naming everything missing, or None when all is present."""
    parts = []
    mods = missing_modules(modules)
    if mods:
        parts.append("not yet in the tree: " + ", ".join(mods))
    bins = missing_binaries(binaries)
    if bins:
        parts.append("binaries not installed: " + ", ".join(bins))
    if testbed and not mods:
        tb = testbed_missing()
        if tb:
            parts.append(tb)
    return "; ".join(parts) or None
