#!/usr/bin/env bash
# Runs the test suite with the venv's python; pytest's exit 5 (no tests collected) is a failure.
set -u
PY="${1:-.venv/bin/python}"
"$PY" -m pytest -q -p no:cacheprovider test
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$rc"
