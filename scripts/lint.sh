#!/usr/bin/env bash
# Static checks: ruff (vnetd, tests, bench), mypy (strict, configured in pyproject: checks vnetd and bench),
# import-linter (layer contracts in pyproject). Runs all three, then prints a summary.
# Exit 0 only when all pass.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN=$ROOT/.venv/bin
[[ -x $BIN/ruff ]] || { echo "[lint] .venv missing: run scripts/setup.sh first" >&2; exit 2; }

declare -a FAILED=()
run() {
    local name=$1; shift
    printf '\n[lint] ==== %s: %s\n' "$name" "$*" >&2
    if "$@"; then
        printf '[lint] ---- %s: ok\n' "$name" >&2
    else
        printf '[lint] ---- %s: FAILED (exit %s)\n' "$name" "$?" >&2
        FAILED+=("$name")
    fi
}

run ruff "$BIN/ruff" check vnetd tests bench
run mypy "$BIN/mypy"
run import-linter "$BIN/lint-imports" --no-cache

if ((${#FAILED[@]})); then
    printf '\n[lint] ########################################################\n' >&2
    printf '[lint] LINT FAILED: %s\n' "${FAILED[*]}" >&2
    printf '[lint] ########################################################\n' >&2
    exit 1
fi
printf '\n[lint] all checks passed (ruff, mypy, import-linter)\n' >&2
