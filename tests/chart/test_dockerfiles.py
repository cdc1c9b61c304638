"""Static review of operator/Dockerfile and node-agent/Dockerfile (they cannot be built here: no
image registry). Checks what a reviewer would: a digest-pinned base shared by both stages, build
tools only in the build stage, a non-root final user matching the chart's uid, entrypoints that
are console scripts of pyproject.toml, and a .dockerignore that keeps the tree out of the context.

Not covered: that the images build and run (needs Docker and a registry).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.chart.helmcli import REPO_ROOT

DOCKERFILES = [REPO_ROOT / "operator" / "Dockerfile", REPO_ROOT / "node-agent" / "Dockerfile"]
BUILD_TOOLS = ("gcc", "g++", "build-essential", "libtss2-dev", "pkg-config", "libc6-dev")
CHART_UID = "65532"


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def text(self, op: str) -> str:
        return "\n".join(arg for o, arg in self.instructions if o == op)


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """ARGs before the first FROM and the stages, with line continuations joined."""
    logical = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            stages.append(Stage(rest.split()[0]))
        elif not stages and op == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((op, rest))
    return args, stages


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_base_is_pinned_by_digest_and_shared_by_both_stages(path: Path):
    args, stages = parse(path)
    assert len(stages) == 2, "a build stage and a final stage"
    assert {s.base for s in stages} == {"${PYTHON_IMAGE}"}
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", args["PYTHON_IMAGE"])


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_final_stage_has_no_build_tools_and_runs_as_the_charts_user(path: Path):
    _, (_build, final) = parse(path)
    installs = final.text("RUN")
    for tool in BUILD_TOOLS:
        assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", installs), (
            f"{path.name}: {tool} is installed in the final stage"
        )
    assert "pip install" not in installs, "dependencies are installed in the build stage"
    assert final.text("USER") == f"{CHART_UID}:{CHART_UID}"
    assert f"--uid {CHART_UID}" in installs
    assert "--from=build /opt/sod /opt/sod" in final.text("COPY")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_entrypoint_is_a_console_script(path: Path):
    _, (_, final) = parse(path)
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = re.fullmatch(r'\["([\w-]+)"\]', final.text("ENTRYPOINT"))
    assert entry, final.text("ENTRYPOINT")
    assert entry[1] in scripts


def test_node_agent_build_stage_has_the_tss_headers_and_final_only_runtime_libs():
    _, (build, final) = parse(REPO_ROOT / "node-agent" / "Dockerfile")
    assert "libtss2-dev" in build.text("RUN")
    assert "'.[tpm]'" in build.text("RUN")
    for lib in ("libtss2-esys-3.0.2-0", "libtss2-tctildr0", "libtss2-tcti-device0"):
        assert lib in final.text("RUN")


def test_dockerignore_admits_only_the_build_inputs():
    lines = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert admitted == {
        "pyproject.toml",
        "README.md",
        "operator/sod_operator",
        "node-agent/sod_node_agent",
    }
    for path in DOCKERFILES:
        copied = {
            src.rstrip("/")
            for op, arg in parse(path)[1][0].instructions
            if op == "COPY"
            for src in arg.split()[:-1]
        }
        assert copied <= admitted, (
            f"{path} copies files .dockerignore excludes: {copied - admitted}"
        )
