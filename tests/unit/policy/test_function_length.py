"""Every function of the policy core reads at once: at most 60 lines (issue 12).

Measured with `ast` from the `def` line to the last line of the body, nested functions
included. Not covered: style of anything outside `sod_operator/policy/`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sod_operator.policy

LIMIT = 60
POLICY = Path(sod_operator.policy.__file__).parent


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """(name, first line, length) of every function in `source`."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            out.append((node.name, node.lineno, node.end_lineno - node.lineno + 1))
    return out


def test_the_measure_counts_from_def_to_the_last_line():
    source = "def f():\n    x = 1\n\n    return x\n\n\nasync def g():\n    pass\n"
    assert function_lengths(source) == [("f", 1, 4), ("g", 7, 2)]


def test_no_function_in_policy_is_longer_than_60_lines():
    too_long = [
        f"{path.name}:{line} {name} ({length} lines)"
        for path in sorted(POLICY.glob("*.py"))
        for name, line, length in function_lengths(path.read_text())
        if length > LIMIT
    ]
    assert too_long == []
