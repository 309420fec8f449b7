#!/usr/bin/env bash
# Run the engine tests under valgrind memcheck against a debug build of the compiled core.
#
#   bash scripts/memcheck.sh [extra pytest args]
#
# Builds _engine in place (src/) with MICHIGRAD_DEBUG=1 (-O0 -g, bounds checks) and runs the
# engine tests that do not import torch (torch under valgrind takes hours and reports its own
# allocator) on that build (PYTHONPATH=src), with PYTHONMALLOC=malloc so valgrind sees every
# allocation. Fails on any invalid read/write, use of uninitialised memory or definitely-lost
# block; the full report is in memcheck.log. Rebuild normally afterwards (pip install -e .).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)"; exit 2; }
python=$(python -c 'import sys; print(sys.executable)')  # the interpreter, not a launcher script

MICHIGRAD_DEBUG=1 "$python" setup.py -q build_ext --inplace --force >/dev/null

log=${MEMCHECK_LOG:-memcheck.log}
status=0
PYTHONPATH=src PYTHONMALLOC=malloc valgrind --tool=memcheck --error-exitcode=99 \
    --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    --track-origins=yes --num-callers=30 --log-file="$log" \
    "$python" -m pytest -q -p no:cacheprovider -m "not slow" \
        tests/test_lifetime.py tests/test_errors.py tests/test_micrograd_compat.py \
        tests/test_engine_api.py tests/test_linear.py -k "not torch" "$@" || status=$?
grep -E "ERROR SUMMARY|definitely lost|Invalid (read|write)|uninitialised" "$log" | sort | uniq -c
exit $status
