#!/usr/bin/env bash
# Build the sdist and a wheel as a release does, then check what they hold and test the wheel
# from outside the source tree. .ci/run calls it after the README's test command.
#
#   bash scripts/check_dist.sh            (KEEP=1 keeps the temporary directory)
#
#  1. `python -m build`: the sdist, then the wheel built from the sdist unpacked in a temporary
#     directory (build's default), i.e. without the checkout: a file the sdist lacks breaks
#     the build or the tests below.
#  2. The sdist's and the wheel's file lists: the Cython sources and the stub in the sdist;
#     the compiled module, _engine.pyi and py.typed in the wheel; no generated .c, annotation
#     HTML or stray binaries in either. `twine check` on both (what PyPI would render).
#  3. `auditwheel show`: the wheel is consistent with a manylinux policy (Linux only; a plain
#     build is tagged linux_<arch>, cibuildwheel's `auditwheel repair` retags it).
#  4. A fresh virtual environment: the wheel with its `test` extra; the checkout's tests/ copied
#     to a temporary directory and run there with the venv's python, so only the installed
#     package can be imported.
#  5. The sdist on a machine without a compiler (CC=/nonexistent): the install fails with a
#     message naming MICHIGRAD_PURE=1; with MICHIGRAD_PURE=1 it installs the pure-Python
#     package, which runs the reference engine (warning once unless MICHIGRAD_PURE=1 is set
#     at run time too).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-python}

step() { printf '\n== check_dist [%ds]: %s\n' "$SECONDS" "$*"; }
fail() { printf 'check_dist: FAILED: %s\n' "$*" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/michigrad-dist.XXXXXX")
if [[ "${KEEP:-0}" == 1 ]]; then echo "check_dist: keeping $work"; else trap 'rm -rf "$work"' EXIT; fi

# pip's output goes to a log, shown when a step fails
pip_quiet() { "$@" >>"$work/pip.log" 2>&1 || { tail -n 40 "$work/pip.log"; fail "$*"; }; }

step "tools (build, auditwheel, twine) in their own venv"
"$python" -m venv "$work/tools"
tools="$work/tools/bin"
[[ -d $tools ]] || tools="$work/tools/Scripts"
pip_quiet "$tools/python" -m pip install build auditwheel twine

step "python -m build (sdist, then a wheel from the unpacked sdist)"
"$tools/python" -m build --outdir "$work/dist" "$root" >"$work/build.log" 2>&1 || {
    tail -n 60 "$work/build.log"; fail "python -m build"; }
grep -E "^Successfully built" "$work/build.log"
sdists=("$work"/dist/michigrad-*.tar.gz) wheels=("$work"/dist/michigrad-*.whl)
[[ ${#sdists[@]} == 1 && -f ${sdists[0]} && ${#wheels[@]} == 1 && -f ${wheels[0]} ]] ||
    fail "expected one sdist and one wheel in $work/dist"
sdist=${sdists[0]} wheel=${wheels[0]}

step "file lists"
"$tools/python" - "$sdist" "$wheel" <<'EOF'
import re, sys, tarfile, zipfile

sdist, wheel = sys.argv[1:]
problems = []
with tarfile.open(sdist) as tar:
    top = tar.getnames()[0].split("/")[0]
    in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
with zipfile.ZipFile(wheel) as whl:
    in_wheel = set(whl.namelist())

for need in ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "CHANGELOG.md",
             "src/michigrad/__init__.py", "src/michigrad/_engine.pyx", "src/michigrad/_engine.pxd",
             "src/michigrad/_engine.pyi", "src/michigrad/py.typed", "tests/conftest.py",
             "tests/test_packaging.py", "tests/typing/user_program.py"]:
    if need not in in_sdist:
        problems.append(f"sdist lacks {need}")
stray = r"\.(c|cpp|html|so|pyd|o|obj|py[cod])$|__pycache__|\.hypothesis|(^|/)build/"
problems += [f"sdist holds {n}" for n in in_sdist if re.search(stray, n)]

compiled = [n for n in in_wheel if re.fullmatch(r"michigrad/_engine\.[^/]*\.(so|pyd)", n)]
if len(compiled) != 1:
    problems.append(f"wheel has {len(compiled)} compiled engine modules: {compiled}")
for need in ["michigrad/__init__.py", "michigrad/engine.py", "michigrad/_reference.py",
             "michigrad/_engine.pyi", "michigrad/_engine.pxd", "michigrad/py.typed"]:
    if need not in in_wheel:
        problems.append(f"wheel lacks {need}")
for n in sorted(in_wheel):
    if re.search(r"\.(c|cpp|html|o|obj|py[cod])$|__pycache__", n):
        problems.append(f"wheel holds {n}")
    elif not re.match(r"michigrad/|michigrad-[^/]+\.dist-info/", n):
        problems.append(f"wheel holds {n} outside the package")

print(f"sdist {top}: {len(in_sdist)} entries; wheel: {len(in_wheel)} files, engine {compiled}")
if problems:
    sys.exit("\n".join(problems))
EOF
"$tools/python" -m twine check --strict "$sdist" "$wheel"

if [[ "$(uname -s)" == Linux ]]; then
    step "auditwheel show"
    "$tools/python" -m auditwheel show "$wheel" 2>&1 | tee "$work/auditwheel.txt"
    tr -s ' \n' '  ' <"$work/auditwheel.txt" |
        grep -Eq 'consistent with the following platform tag: "manylinux_[0-9]+_[0-9]+_' ||
        fail "auditwheel does not find the wheel consistent with a manylinux policy"
fi

if [[ "$(uname -s)" == Linux && "$(uname -m)" == x86_64 ]]; then
    # The engine's results are Python's bits only if no multiply and add are fused into one
    # rounding; the AVX-512 copies of the vector kernels (_vector_kernels.pxi) could fuse them.
    step "no fused multiply-add instruction in the wheel's compiled engine"
    command -v objdump >/dev/null || fail "objdump (GNU binutils) is needed to check the engine"
    "$tools/python" - "$wheel" "$work/engine.so" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.startswith("michigrad/_engine") and n.endswith(".so"))
    open(sys.argv[2], "wb").write(z.read(name))
EOF
    fused=$(objdump -d --no-show-raw-insn "$work/engine.so" | grep -cE '\svfn?m(add|sub)' || true)
    [[ "$fused" == 0 ]] || fail "the compiled engine holds $fused fused multiply-add instructions"
    echo "no fused multiply-add instruction in $(basename "$wheel")'s engine"
fi

step "fresh venv: the wheel and its test extra"
"$python" -m venv "$work/venv"
vpy="$work/venv/bin/python"
[[ -x $vpy ]] || vpy="$work/venv/Scripts/python.exe"
pip_quiet "$vpy" -m pip install "$wheel[test]"
"$vpy" -m pip list 2>/dev/null | grep -Ei '^(michigrad|torch|numpy|micrograd|mypy|pytest|hypothesis) '

step "the tests, from outside the source tree, against the installed wheel"
mkdir "$work/t"
cp -R "$root/tests" "$root/pyproject.toml" "$work/t/"  # pyproject.toml: pytest's settings only
rm -rf "$work/t/tests/__pycache__" "$work/t/tests/.hypothesis"
(
    cd "$work/t"
    site=$("$vpy" -c 'import michigrad, os; print(os.path.dirname(michigrad.__file__))')
    case $site in "$work/venv"/*) ;; *) fail "michigrad imported from $site, not the venv";; esac
    unset MICHIGRAD_PURE
    "$vpy" -m pytest -p no:cacheprovider tests
)

step "the sdist without a compiler"
nocc_log="$work/nocc.log"
if CC=/nonexistent CXX=/nonexistent "$vpy" -m pip install --no-cache-dir --force-reinstall \
        --no-deps "$sdist" >"$nocc_log" 2>&1; then
    fail "the sdist installed with CC=/nonexistent (no compiler): it should have stopped"
fi
grep -q "michigrad: could not build its compiled engine" "$nocc_log" &&
    grep -q "MICHIGRAD_PURE=1 pip install michigrad" "$nocc_log" || {
    tail -n 40 "$nocc_log"; fail "the no-compiler failure does not say how to go on"; }
grep -E "could not build its compiled engine|MICHIGRAD_PURE=1 pip install" "$nocc_log" | sed 's/^/    /'

step "the sdist without a compiler, MICHIGRAD_PURE=1"
MICHIGRAD_PURE=1 CC=/nonexistent CXX=/nonexistent "$vpy" -m pip install -q --no-cache-dir \
    --force-reinstall --no-deps "$sdist"
(
    cd "$work"
    unset MICHIGRAD_PURE
    "$vpy" -c 'import michigrad._engine' 2>/dev/null && fail "the pure install has a compiled engine"
    out=$("$vpy" -c 'import michigrad; print(michigrad.ENGINE)' 2>"$work/warn.txt")
    [[ $out == reference ]] || fail "pure install: ENGINE is '$out'"
    grep -q "RuntimeWarning: michigrad: compiled engine unavailable" "$work/warn.txt" ||
        fail "pure install without MICHIGRAD_PURE at run time: no warning ($(cat "$work/warn.txt"))"
    out=$(MICHIGRAD_PURE=1 "$vpy" -c 'import michigrad; print(michigrad.ENGINE)' 2>"$work/warn.txt")
    [[ $out == reference && ! -s "$work/warn.txt" ]] ||
        fail "pure install with MICHIGRAD_PURE=1: ENGINE '$out', stderr: $(cat "$work/warn.txt")"
    echo "pure install: ENGINE=reference; warns once without MICHIGRAD_PURE=1, silent with it"
)

step "OK: sdist and wheel $(basename "$wheel")"
