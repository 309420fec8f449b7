#!/usr/bin/env bash
# Run the engine tests under valgrind memcheck against a debug build of the compiled core.
#
#   bash scripts/memcheck.sh [extra pytest args]
#
# Builds _engine in place (src/) with MICHIGRAD_DEBUG=1 (-O0 -g, bounds checks) and runs the
# engine tests that do not need torch (torch under valgrind takes hours) on that build
# (PYTHONPATH=src), with PYTHONMALLOC=malloc so valgrind sees every allocation.
#
# valgrind also reports the dynamic loader, numpy's and CPython's own start-up allocations; those
# are not ours. The run fails if the tests fail, or if any error or definitely-lost block has a
# frame in michigrad's compiled engine. Full report: memcheck.log. Rebuild normally afterwards
# (pip install -e .).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)"; exit 2; }
python=$(python -c 'import sys; print(sys.executable)')  # the interpreter, not a launcher script

MICHIGRAD_DEBUG=1 "$python" setup.py -q build_ext --inplace --force >/dev/null

log=${MEMCHECK_LOG:-memcheck.log}
status=0
PYTHONPATH=src PYTHONMALLOC=malloc valgrind --tool=memcheck \
    --leak-check=full --show-leak-kinds=definite \
    --track-origins=yes --num-callers=40 --log-file="$log" \
    "$python" -m pytest -q -p no:cacheprovider -m "not slow" \
        tests/test_lifetime.py tests/test_errors.py tests/test_micrograd_compat.py \
        tests/test_engine_api.py tests/test_linear.py tests/test_replay.py \
        tests/test_array_kernels.py tests/test_array.py tests/test_replay_arrays.py tests/test_sweep.py \
        tests/test_free_order.py tests/test_vector_kernels.py \
        -k "not torch" "$@" || status=$?

"$python" - "$log" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
records = re.split(r"\n==\d+== \n", text)  # valgrind separates its records with an empty line
ours = [r for r in records if "_engine" in r and re.search(r"Invalid|uninitialised|definitely lost|Mismatched|overlap", r)]
summary = re.findall(r"ERROR SUMMARY: .*", text)
print("valgrind:", summary[0] if summary else "no summary (did the run finish?)")
print(f"records involving michigrad's engine: {len(ours)}")
for record in ours[:5]:
    print(record)
sys.exit(1 if ours or not summary else 0)
PY
ours=$?
[ "$status" -eq 0 ] || { echo "the tests failed under valgrind (exit $status)"; exit "$status"; }
exit $ours
