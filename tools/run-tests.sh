#!/usr/bin/env bash
# The test command behind `make test`: lint, then every tier (unit, node-agent with swtpm, e2e on
# the local control plane). pytest's exit code 5 ("no tests collected") is a failure here:
# a tier that silently collects nothing proves nothing.
set -uo pipefail
bin=${VENV:-.venv}/bin
fail=0
run() {
  echo "[test] $*" >&2
  "$@"
  local rc=$?
  if [ $rc -eq 5 ]; then echo "[test] no tests collected by: $* (treated as failure)" >&2; fail=1
  elif [ $rc -ne 0 ]; then fail=1; fi
}
run "$bin/ruff" check .
run "$bin/ruff" format --check .
run "$bin/mypy"
run "$bin/lint-imports"
run "$bin/pytest" tests -q
exit $fail
